"""Pacing shared by both clients.

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
import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class FixedRateLimiter:
    """At most `rate` requests per `per` seconds, as evenly spaced slots (no bursts).

    `margin` widens each slot a little, because the server counts arrivals, not departures.
    """

    def __init__(
        self,
        rate: float = 3.0,
        per: float = 1.0,
        *,
        margin: float = 0.05,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate <= 0 or per <= 0:
            raise ValueError("rate and per must be positive")
        self.interval = per / rate * (1.0 + margin)
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Book the next free slot; return how long to wait for it (seconds)."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
            return slot - now

    async def acquire(self) -> None:
        """Wait for this caller's slot."""
        wait = self.reserve()
        if wait > 0:
            await self._sleep(wait)

    def penalize(self, seconds: float) -> None:
        """Push every future slot back: the server said we were too fast (a 429)."""
        with self._lock:
            self._next = max(self._next, self._clock() + max(seconds, self.interval))


_postalytics: dict[str, FixedRateLimiter] = {}
_postalytics_lock = threading.Lock()


def key_fingerprint(api_key: str) -> str:
    """A stable, non-reversible name for an API key (registry key; safe to log)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def postalytics_limiter(api_key: str) -> FixedRateLimiter:
    """The one 3 requests/s limiter for this API key in this process."""
    name = key_fingerprint(api_key)
    with _postalytics_lock:
        limiter = _postalytics.get(name)
        if limiter is None:
            limiter = _postalytics[name] = FixedRateLimiter(3.0, 1.0)
        return limiter


@dataclass(frozen=True)
class RateLimitSnapshot:
    """The last rate-limit numbers HighLevel sent (None until a response carried them)."""

    max: int | None = None
    remaining: int | None = None
    interval_ms: int | None = None
    daily_limit: int | None = None
    daily_remaining: int | None = None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value.strip()))
    except ValueError:
        return None


class WindowPacer:
    """Keeps our sends within `max_requests` per `interval` seconds, in any sliding window.

    A sliding-window bound also holds for any fixed window of the same length, so it is
    safe whichever way the server counts. Headers can only make it stricter: when the server
    reports fewer remaining requests than our own count implies (someone else spends the
    same budget), the difference is booked as phantom sends that age out normally.
    """

    def __init__(
        self,
        max_requests: int = 100,
        interval: float = 10.0,
        *,
        headroom: float = 0.05,
        slack: float = 0.05,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.max_requests = max_requests
        self.interval = interval
        self.headroom = headroom  # fraction of the window kept unused
        self.slack = slack  # fraction added to the window for network skew
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()
        self._blocked_until = 0.0
        self._daily_remaining: int | None = None
        self._lock = threading.Lock()
        self.snapshot = RateLimitSnapshot()
        self.throttled = 0  # 429s seen by any client using this pacer

    # -- bookkeeping (call with the lock held) --------------------------------------------

    def _window(self) -> float:
        return self.interval * (1.0 + self.slack)

    def _budget(self) -> int:
        return max(1, self.max_requests - math.ceil(self.max_requests * self.headroom))

    def _expire(self, now: float) -> None:
        horizon = now - self._window()
        while self._sent and self._sent[0] <= horizon:
            self._sent.popleft()

    def _try_take(self) -> float:
        now = self._clock()
        self._expire(now)
        if now < self._blocked_until:
            return self._blocked_until - now
        if len(self._sent) < self._budget():
            self._sent.append(now)
            if self._daily_remaining is not None:
                self._daily_remaining -= 1
            return 0.0
        return max(self._sent[0] + self._window() - now, 0.001)

    # -- public ---------------------------------------------------------------------------

    async def acquire(self) -> None:
        """Wait until one more request fits in the window, and book it."""
        while True:
            with self._lock:
                wait = self._try_take()
            if wait <= 0:
                return
            await self._sleep(wait)

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
                self.interval = interval_ms / 1000.0
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
            if remaining is not None:
                now = self._clock()
                self._expire(now)
                ours_left = self._budget() - len(self._sent)
                theirs_left = remaining - math.ceil(self.max_requests * self.headroom)
                for _ in range(max(0, ours_left - max(theirs_left, 0))):
                    self._sent.append(now)

    def on_throttled(self, retry_after: float | None = None) -> None:
        """A 429: treat the window as spent, and honour `Retry-After` when given."""
        with self._lock:
            self.throttled += 1
            now = self._clock()
            self._expire(now)
            for _ in range(max(0, self._budget() - len(self._sent))):
                self._sent.append(now)
            if retry_after is not None:
                self._blocked_until = max(self._blocked_until, now + retry_after)

    def daily_remaining(self) -> int | None:
        """Our estimate of the day's remaining requests (None before the first answer)."""
        with self._lock:
            return self._daily_remaining

    def daily_exhausted(self, reserve: int) -> bool:
        """Whether the day's quota is down to `reserve` requests (writes should stop)."""
        left = self.daily_remaining()
        return left is not None and left <= reserve


_highlevel: dict[str, WindowPacer] = {}
_highlevel_lock = threading.Lock()


def highlevel_pacer(location_id: str) -> WindowPacer:
    """The one pacer for this HighLevel location in this process."""
    with _highlevel_lock:
        pacer = _highlevel.get(location_id)
        if pacer is None:
            pacer = _highlevel[location_id] = WindowPacer()
        return pacer
