"""Pacers with an injected clock: fixed-rate spacing, window budget, learning from headers."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from typing import Any

import pytest

from mailsync.ratelimit import (
    FixedRateLimiter,
    WindowPacer,
    highlevel_pacer,
    key_fingerprint,
    postalytics_limiter,
)


class VirtualTime:
    """Virtual time for one event loop: a sleeper wakes when every other task is blocked
    and its deadline is the earliest, so concurrent sleeps overlap as they would for real.
    Also used by the client tests."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.start = self.now = start
        self.sleeps: list[float] = []
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0
        self._armed = False

    def clock(self) -> float:
        return self.now

    @property
    def elapsed(self) -> float:
        return self.now - self.start

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._heap, (self.now + max(seconds, 0.0), self._seq, future))
        self._seq += 1
        self._arm(loop)
        await future

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._armed:
            self._armed = True
            loop.call_soon(self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop._ready:  # type: ignore[attr-defined]  # others still run at this instant
            loop.call_soon(self._tick, loop)
            return
        self._armed = False
        while self._heap:
            when, _, future = heapq.heappop(self._heap)
            if not future.done():
                self.now = max(self.now, when)
                future.set_result(None)
                break
        if self._heap:
            self._arm(loop)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- FixedRateLimiter -----------------------------------------------------------------------


def stamps_of(pacer: WindowPacer, vt: VirtualTime, n: int, hold: float = 0.0) -> list[float]:
    """Send `n` concurrent requests through the pacer, each answered after `hold` seconds."""
    stamps: list[float] = []

    async def one() -> None:
        async with pacer.slot():
            stamps.append(vt.now)
            if hold:
                await vt.sleep(hold)

    async def many() -> None:
        await asyncio.gather(*(one() for _ in range(n)))

    run(many())
    return stamps


def test_fixed_rate_spaces_slots_evenly() -> None:
    vt = VirtualTime()
    limiter = FixedRateLimiter(3, 1.0, margin=0.0, clock=vt.clock, sleep=vt.sleep)
    stamps = stamps_of(limiter, vt, 9)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert stamps[0] == vt.start
    assert all(abs(g - 1 / 3) < 1e-9 for g in gaps)


def test_fixed_rate_never_four_in_a_second_even_with_slow_answers() -> None:
    vt = VirtualTime()
    limiter = FixedRateLimiter(3, 1.0, clock=vt.clock, sleep=vt.sleep)
    # Answers take 2 s: a request still counts until a second after its answer.
    stamps = stamps_of(limiter, vt, 12, hold=2.0)
    for i in range(len(stamps) - 3):
        assert stamps[i + 3] - stamps[i] > 3.0


def test_fixed_rate_accepts_fractional_rates() -> None:
    vt = VirtualTime()
    limiter = FixedRateLimiter(2.5, 1.0, clock=vt.clock, sleep=vt.sleep)
    stamps = stamps_of(limiter, vt, 10)
    for i in range(len(stamps) - 2):
        assert stamps[i + 2] - stamps[i] > 0.8  # at most 2 per 1 s window, spaced 0.42 s
    with pytest.raises(ValueError):
        FixedRateLimiter(0, 1.0)


def test_fixed_rate_penalize_pauses_everyone() -> None:
    now = [0.0]
    limiter = FixedRateLimiter(3, 1.0, clock=lambda: now[0])
    assert limiter._try_take() == 0.0
    limiter.release()
    limiter.penalize(5.0)
    assert limiter._try_take() == pytest.approx(5.0)
    assert limiter.throttled == 1


def test_pacer_is_thread_safe() -> None:
    pacer = WindowPacer(100_000, 1.0, headroom=0.0, clock=lambda: 0.0)
    taken: list[float] = []

    def book() -> None:
        for _ in range(500):
            taken.append(pacer._try_take())
            pacer.release()

    threads = [threading.Thread(target=book) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert taken.count(0.0) == 2000 and pacer._used(0.0) == 2000


def test_registries_share_per_key_and_location() -> None:
    assert postalytics_limiter("key-aaaaaa") is postalytics_limiter("key-aaaaaa")
    assert postalytics_limiter("key-aaaaaa") is not postalytics_limiter("key-bbbbbb")
    assert highlevel_pacer("loc-a") is highlevel_pacer("loc-a")
    assert highlevel_pacer("loc-a") is not highlevel_pacer("loc-b")
    fp = key_fingerprint("key-aaaaaa")
    assert "key-aaaaaa" not in fp and len(fp) == 16


# -- WindowPacer ----------------------------------------------------------------------------


def test_window_budget_keeps_headroom() -> None:
    vt = VirtualTime()
    pacer = WindowPacer(100, 10.0, clock=vt.clock, sleep=vt.sleep)
    stamps = stamps_of(pacer, vt, 300)
    for i, t in enumerate(stamps):
        in_window = [s for s in stamps[i:] if s < t + 10.0]
        assert len(in_window) <= 95
    assert stamps[94] == vt.start and stamps[95] == pytest.approx(vt.start + 10.5)


def test_slow_answers_hold_their_place() -> None:
    vt = VirtualTime()
    pacer = WindowPacer(10, 1.0, headroom=0.0, slack=0.0, clock=vt.clock, sleep=vt.sleep)
    # Answers take 3 s (longer than the window): the server may count a request at any
    # moment until its answer, so no more than 10 may be sent in any 1 s + 3 s span.
    stamps = stamps_of(pacer, vt, 40, hold=3.0)
    for i, t in enumerate(stamps):
        assert len([s for s in stamps[i:] if s < t + 4.0]) <= 10


def test_waiters_are_served_in_order() -> None:
    vt = VirtualTime()
    pacer = WindowPacer(2, 1.0, headroom=0.0, clock=vt.clock, sleep=vt.sleep)
    order: list[int] = []

    async def one(i: int) -> None:
        async with pacer.slot():
            order.append(i)

    async def many() -> None:
        await asyncio.gather(*(one(i) for i in range(10)))

    run(many())
    assert order == list(range(10))


def test_observe_learns_limits_and_other_spenders() -> None:
    now = [0.0]
    pacer = WindowPacer(clock=lambda: now[0])
    assert pacer._try_take() == 0.0  # our one send
    pacer.release()
    pacer.observe({"X-RateLimit-Max": "50", "X-RateLimit-Interval-Milliseconds": "2000",
                   "X-RateLimit-Remaining": "10", "X-RateLimit-Daily-Remaining": "999"})
    assert pacer.max_requests == 50 and pacer.interval == 2.0
    assert pacer.snapshot.remaining == 10 and pacer.snapshot.daily_remaining == 999
    # 10 remaining minus 3 headroom: only 7 more sends fit until the window ages out.
    taken = 0
    while pacer._try_take() == 0.0:
        taken += 1
    assert taken == 7
    for _ in range(taken):
        pacer.release()
    now[0] = 2.2  # window (2 s + 5 %) has passed since the answers
    assert pacer._try_take() == 0.0


def test_observe_never_loosens_below_our_own_count() -> None:
    now = [0.0]
    pacer = WindowPacer(10, 1.0, headroom=0.0, clock=lambda: now[0])
    for _ in range(8):
        pacer._try_take()
    # A fixed-window server that just reset says 10 remain: we still count our 8.
    pacer.observe({"X-RateLimit-Remaining": "10"})
    assert pacer._try_take() == 0.0 and pacer._try_take() == 0.0
    assert pacer._try_take() > 0


def test_throttle_spends_window_and_honours_retry_after() -> None:
    now = [0.0]
    pacer = WindowPacer(100, 10.0, clock=lambda: now[0])
    pacer.on_throttled()
    assert pacer.throttled == 1
    assert pacer._try_take() == pytest.approx(10.5)
    now[0] = 10.6
    assert pacer._try_take() == 0.0
    pacer.on_throttled(retry_after=30.0)
    assert pacer._try_take() == pytest.approx(30.0)


def test_daily_estimate_counts_sends_and_accepts_rollover() -> None:
    now = [0.0]
    pacer = WindowPacer(clock=lambda: now[0])
    assert pacer.daily_remaining() is None and not pacer.daily_exhausted(10)
    pacer.observe({"X-RateLimit-Daily-Remaining": "12"})
    pacer._try_take()
    pacer._try_take()
    assert pacer.daily_remaining() == 10 and pacer.daily_exhausted(10)
    pacer.observe({"X-RateLimit-Daily-Remaining": "11"})  # stale: in-flight not counted yet
    assert pacer.daily_remaining() == 10
    pacer.observe({"X-RateLimit-Daily-Remaining": "200000"})  # a new day
    assert pacer.daily_remaining() == 200_000


def test_unreadable_headers_are_ignored() -> None:
    pacer = WindowPacer()
    pacer.observe({"X-RateLimit-Max": "lots", "X-RateLimit-Remaining": ""})
    assert pacer.max_requests == 100 and pacer.snapshot.remaining is None


def test_learned_interval_applies_to_waiters_already_asleep() -> None:
    vt = VirtualTime()
    pacer = WindowPacer(clock=vt.clock, sleep=vt.sleep)  # default: 100 per 10 s

    async def scenario() -> float:
        for _ in range(95):
            await pacer.acquire()
            pacer.release()
        waiter = asyncio.ensure_future(pacer.acquire())
        await asyncio.sleep(0)
        # The server says the window is really 100 ms: the waiter must not sleep 10 s.
        pacer.observe({"X-RateLimit-Interval-Milliseconds": "100"})
        await waiter
        return vt.elapsed

    assert run(scenario()) <= 1.0 + 1e-9
