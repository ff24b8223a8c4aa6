"""Pacing shared by both clients.

* `Pacer`: what the request loop (`ApiClient`) needs from a pacer; both classes below are one.
* `FixedRateLimiter`: evenly spaced slots (Postalytics: 3 requests/s per API key), one per
  key per process through `postalytics_limiter`.
* `WindowPacer`: a sliding-window pacer for HighLevel (100 requests per 10 s per location)
  that starts conservative and corrects itself from the `X-RateLimit-*` headers; one per
  location per process through `highlevel_pacer`.

Both are safe to share between coroutines and between threads (each thread running its own
event loop): the bookkeeping is plain arithmetic under a `threading.Lock`, and waiting
happens outside it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RateLimitSnapshot:
    """The last rate-limit numbers HighLevel sent (None until a response carried them)."""

    max: int | None = None
    remaining: int | None = None
    interval_ms: int | None = None
    daily_limit: int | None = None
    daily_remaining: int | None = None


@dataclass(frozen=True)
class QuotaDeferral:
    """A write held back: the day's remaining requests are down to the reserve kept unused."""

    remaining: int
    reserve: int


@runtime_checkable
class Pacer(Protocol):
    """What the request loop needs from pacing, whatever the API's limits are."""

    async def acquire(self) -> float:
        """Wait for a place and take it; returns the ticket to hand back to `release`."""
        ...

    def release(self, sent_at: float | None = None) -> None:
        """The attempt holding the ticket `sent_at` has ended, however it ended."""
        ...

    def observe(self, headers: Mapping[str, str]) -> None:
        """Learn from one response's headers (rate-limit figures)."""
        ...

    def on_throttled(self, retry_after: float | None = None) -> None:
        """A 429 arrived: slow everyone sharing this budget."""
        ...

    def defer_write(self, reserve: int) -> QuotaDeferral | None:
        """Why a write must not be sent now (daily quota down to `reserve`), or None."""
        ...


class NoPacer:
    """A `Pacer` that never waits: for an `ApiClient` whose API sets no limit."""

    async def acquire(self) -> float:
        """Take a place at once."""
        return 0.0

    def release(self, sent_at: float | None = None) -> None:
        """Nothing to free."""

    def observe(self, headers: Mapping[str, str]) -> None:
        """Nothing to learn."""

    def on_throttled(self, retry_after: float | None = None) -> None:
        """Nothing to slow."""

    def defer_write(self, reserve: int) -> QuotaDeferral | None:
        """Never defers."""
        return None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value.strip()))
    except ValueError:
        return None


class WindowPacer:
    """At most `max_requests` per `interval` seconds, counted the way the server sees them.

    The server counts a request when it arrives: after we send it, before we get its answer.
    A request holds its place from its send until `interval` after the latest moment it can
    have been counted, estimated as its answer time minus the quickest round trip seen so
    far. With steady latency that is a window after its send; a slow answer holds its place
    longer by however much slower it was. That estimate is early by up to the quickest round
    trip (a request that queued before the server counted it, then was answered at once), so
    it may take off no more than `slack`, the share of the window each place is held longer,
    adds back: a place is never free before a window after its answer. `headroom` leaves a
    share of the budget unused. The bound holds for a sliding or a fixed server window alike.
    Headers can only make it stricter: when the server reports fewer remaining requests than
    our own count implies (someone else spends the same budget), the difference is booked as
    phantom requests that age out normally. `spacing` optionally spreads sends evenly. With
    `probe`, a pacer that has heard no answer for a window (never, or not lately) sends one
    request alone and waits for its answer before the rest: the
    budget may have been spent meanwhile by a client it cannot see (another worker that held
    the location until now), and that answer's headers say so before a burst goes out.

    Waiters queue FIFO per event loop, so only the head of the queue polls the clock.
    """

    def __init__(
        self,
        max_requests: int = 100,
        interval: float = 10.0,
        *,
        headroom: float = 0.02,
        slack: float = 0.01,
        spacing: float = 0.0,
        recheck: float = 1.0,
        probe: bool = False,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if max_requests < 1 or interval <= 0:
            raise ValueError("max_requests and interval must be positive")
        self.max_requests = max_requests
        self.interval = interval
        self.headroom = headroom  # share of the window left unused, for safety
        self.slack = slack  # share added to the window for clock and network skew
        self.spacing = spacing  # minimum gap between two sends
        self.recheck = recheck  # longest single wait, so limits learned meanwhile apply
        self.probe = probe  # one request alone first, after a window without answers
        self._answered_at = -math.inf  # when an attempt last ended (answered, mostly)
        self._clock = clock
        self._sleep = sleep
        self._in_flight = 0
        self._done: deque[float] = deque()  # latest count times (and phantoms), oldest first
        self._fastest: float | None = None  # quickest send-to-answer seen, seconds
        self._next_at = 0.0
        self._blocked_until = 0.0
        self._daily_remaining: int | None = None
        self._daily_heard = 0.0  # when the server last told us the day's remaining requests
        self.daily_recheck = 600.0  # seconds after which an exhausted estimate is re-asked
        self._lock = threading.Lock()
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self.snapshot = RateLimitSnapshot()
        self.throttled = 0  # 429s seen by any client using this pacer

    # -- bookkeeping (call with the lock held) --------------------------------------------

    def _span(self) -> float:
        # How long a place stays taken after its request was counted.
        return self.interval * (1.0 + self.slack)

    def _budget(self) -> int:
        return max(1, self.max_requests - math.ceil(self.max_requests * self.headroom))

    def _used(self, now: float) -> int:
        horizon = now - self._span()
        while self._done and self._done[0] <= horizon:
            self._done.popleft()
        return self._in_flight + len(self._done)

    def _fill(self, now: float, count: int) -> None:
        self._done.extend([now] * max(0, count))

    def _set_interval(self, interval: float) -> None:
        # A place booked under a longer window took up to that window's slack off its answer
        # time: shifted by the difference, it is still free no sooner than a window after it.
        shrink = (self.interval - interval) * self.slack
        if shrink > 0:
            self._done = deque(t + shrink for t in self._done)
        self.interval = interval

    def _try_take(self) -> float:
        """Book a request now and return 0, or return how long to wait before trying again."""
        now = self._clock()
        used = self._used(now)
        if now < self._blocked_until:
            return self._blocked_until - now
        if now < self._next_at:
            return self._next_at - now
        if self.probe and self._in_flight and now - self._answered_at > self._span():
            # The probe is out: its answer says what others spent of this window.
            return max(0.001, self._span() * 0.002)
        if used < self._budget():
            self._in_flight += 1
            self._next_at = now + self.spacing
            if self._daily_remaining is not None:
                self._daily_remaining -= 1
            return 0.0
        if self._done:
            return max(self._done[0] + self._span() - now, 0.001)
        # The whole budget is in flight: the next answer frees a place.
        return max(0.005, self._span() * 0.02)

    def _queue(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._lock:
            queue = self._queues.get(loop)
            if queue is None:
                queue = self._queues[loop] = asyncio.Lock()
            return queue

    # -- public ---------------------------------------------------------------------------

    async def acquire(self) -> float:
        """Wait for a place in the window and take it; returns the send time to hand back to
        `release` when the answer (or an error) arrives."""
        async with self._queue():
            while True:
                with self._lock:
                    wait = self._try_take()
                    if wait <= 0:
                        return self._clock()
                await self._sleep(min(wait, self.recheck))

    def release(self, sent_at: float | None = None) -> None:
        """The request sent at `sent_at` got its answer (or failed): start its cool-down.

        Without `sent_at` the cool-down starts at the answer itself, the most cautious guess.
        """
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            now = self._clock()
            self._answered_at = now
            counted = now
            if sent_at is not None and now >= sent_at:
                rtt = now - sent_at
                if self._fastest is None or rtt < self._fastest:
                    self._fastest = rtt
                counted = now - min(self._fastest, self.interval * self.slack)
            if self._done and counted < self._done[-1]:
                bisect.insort(self._done, counted)  # behind a phantom booked meanwhile
            else:
                self._done.append(counted)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """`acquire` on entry, `release` on exit."""
        sent_at = await self.acquire()
        try:
            yield
        finally:
            self.release(sent_at)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Learn from one response's `X-RateLimit-*` headers."""
        limit = _int_header(headers, "X-RateLimit-Max")
        remaining = _int_header(headers, "X-RateLimit-Remaining")
        interval_ms = _int_header(headers, "X-RateLimit-Interval-Milliseconds")
        daily_limit = _int_header(headers, "X-RateLimit-Limit-Daily")
        daily_remaining = _int_header(headers, "X-RateLimit-Daily-Remaining")
        with self._lock:
            old = self.snapshot
            self.snapshot = RateLimitSnapshot(
                max=limit if limit is not None else old.max,
                remaining=remaining if remaining is not None else old.remaining,
                interval_ms=interval_ms if interval_ms is not None else old.interval_ms,
                daily_limit=daily_limit if daily_limit is not None else old.daily_limit,
                daily_remaining=(
                    daily_remaining if daily_remaining is not None else old.daily_remaining
                ),
            )
            if limit is not None and limit > 0:
                self.max_requests = limit
            if interval_ms is not None and interval_ms > 0:
                self._set_interval(interval_ms / 1000.0)
            if daily_remaining is not None:
                # Our estimate already counts requests still in flight, so a higher figure
                # from the server is stale, unless it is far higher: the day rolled over.
                known = self._daily_remaining
                if (
                    known is None
                    or daily_remaining < known
                    or daily_remaining - known > 2 * self.max_requests
                ):
                    self._daily_remaining = daily_remaining
                self._daily_heard = self._clock()
            if remaining is not None:
                now = self._clock()
                ours_left = self._budget() - self._used(now)
                theirs_left = remaining - math.ceil(self.max_requests * self.headroom)
                self._fill(now, ours_left - max(theirs_left, 0))

    def on_throttled(self, retry_after: float | None = None) -> None:
        """A 429: treat the window as spent, and honour `Retry-After` when given."""
        with self._lock:
            self.throttled += 1
            now = self._clock()
            self._fill(now, self._budget() - self._used(now))
            if retry_after is not None:
                self._blocked_until = max(self._blocked_until, now + retry_after)

    def daily_remaining(self) -> int | None:
        """Our estimate of the day's remaining requests (None before the first answer)."""
        with self._lock:
            return self._daily_remaining

    def daily_exhausted(self, reserve: int) -> bool:
        """Whether the day's quota is down to `reserve` requests (writes should stop).

        An estimate the server has not confirmed for `daily_recheck` seconds lets requests
        through again: their answers say whether a new day has begun, which a worker that
        outlives the day (a served deployment) would otherwise never hear, having stopped
        sending.
        """
        with self._lock:
            left = self._daily_remaining
            stale = self._clock() - self._daily_heard > self.daily_recheck
        return left is not None and left <= reserve and not stale

    def defer_write(self, reserve: int) -> QuotaDeferral | None:
        """A deferral when the day's quota is down to `reserve` (see `daily_exhausted`)."""
        if not self.daily_exhausted(reserve):
            return None
        return QuotaDeferral(remaining=self.daily_remaining() or 0, reserve=reserve)


class FixedRateLimiter(WindowPacer):
    """`rate` requests per `per` seconds, evenly spaced (Postalytics: 3/s per API key).

    `margin` widens the spacing a little, because the server counts arrivals, not sends;
    the window bound from `WindowPacer` still holds when answers are slow.
    """

    def __init__(
        self,
        rate: float = 3,
        per: float = 1.0,
        *,
        margin: float = 0.05,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate <= 0 or per <= 0:
            raise ValueError("rate and per must be positive")
        super().__init__(
            # A fractional rate (2.5/s) allows whole requests per window; spacing does the rest.
            max_requests=max(1, int(rate)),
            interval=per,
            headroom=0.0,
            slack=margin,
            spacing=per / rate * (1.0 + margin),
            clock=clock,
            sleep=sleep,
        )

    def on_throttled(self, retry_after: float | None = None) -> None:
        """A 429: pause everyone for `retry_after`, or one whole window when it is not given."""
        super().on_throttled(retry_after if retry_after is not None else self.interval)

    def penalize(self, seconds: float) -> None:
        """The server said we were too fast (a 429): pause everyone for `seconds`."""
        self.on_throttled(retry_after=seconds)


_postalytics: dict[str, FixedRateLimiter] = {}
_postalytics_lock = threading.Lock()


def key_fingerprint(api_key: str) -> str:
    """A stable, non-reversible name for an API key (registry key; safe to log)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def postalytics_limiter(api_key: str, rate: float = 3.0) -> FixedRateLimiter:
    """The one limiter for this API key (at `rate` requests/s) in this process."""
    name = f"{key_fingerprint(api_key)}@{rate:g}"
    with _postalytics_lock:
        limiter = _postalytics.get(name)
        if limiter is None:
            limiter = _postalytics[name] = FixedRateLimiter(rate, 1.0)
        return limiter


_highlevel: dict[str, WindowPacer] = {}
_highlevel_lock = threading.Lock()


def forget_pacers() -> None:
    """Drop every process-wide pacer and limiter, with what they learned. For a process that
    starts over against a new world reusing the same ids (a seeded sandbox, in tests and
    benchmarks): an old location's spent quota must not carry over."""
    with _highlevel_lock:
        _highlevel.clear()
    with _postalytics_lock:
        _postalytics.clear()


def highlevel_pacer(location_id: str) -> WindowPacer:
    """The one pacer for this HighLevel location in this process."""
    with _highlevel_lock:
        pacer = _highlevel.get(location_id)
        if pacer is None:
            # Workers hand locations over: a window may be spent already when one starts.
            pacer = _highlevel[location_id] = WindowPacer(probe=True)
        return pacer
