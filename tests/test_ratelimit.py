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


def test_fixed_rate_spaces_slots_evenly() -> None:
    vt = VirtualTime()
    limiter = FixedRateLimiter(3, 1.0, margin=0.0, clock=vt.clock, sleep=vt.sleep)
    stamps: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        stamps.append(vt.now)

    async def many() -> None:
        await asyncio.gather(*(one() for _ in range(9)))

    run(many())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert stamps[0] == vt.start
    assert all(abs(g - 1 / 3) < 1e-9 for g in gaps)


def test_fixed_rate_margin_and_idle_gap() -> None:
    now = [0.0]
    limiter = FixedRateLimiter(3, 1.0, clock=lambda: now[0])
    assert limiter.reserve() == 0.0
    assert limiter.reserve() == pytest.approx(0.35)
    now[0] = 100.0  # after idling, no stored-up burst
    assert limiter.reserve() == 0.0
    assert limiter.reserve() == pytest.approx(0.35)


def test_fixed_rate_penalize_pushes_slots_back() -> None:
    now = [0.0]
    limiter = FixedRateLimiter(3, 1.0, clock=lambda: now[0])
    limiter.reserve()
    limiter.penalize(5.0)
    assert limiter.reserve() == pytest.approx(5.0)


def test_fixed_rate_is_thread_safe() -> None:
    limiter = FixedRateLimiter(1000, 1.0, margin=0.0, clock=lambda: 0.0)
    waits: list[float] = []

    def book() -> None:
        for _ in range(500):
            waits.append(limiter.reserve())

    threads = [threading.Thread(target=book) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(round(w, 9) for w in waits)) == 2000  # every slot distinct


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
    stamps: list[float] = []

    async def one() -> None:
        await pacer.acquire()
        stamps.append(vt.now)

    async def many() -> None:
        await asyncio.gather(*(one() for _ in range(300)))

    run(many())
    # Any 10 s window (plus slack) holds at most 95 sends.
    for i, t in enumerate(stamps):
        in_window = [s for s in stamps[i:] if s < t + 10.0]
        assert len(in_window) <= 95
    assert stamps[94] == vt.start and stamps[95] == pytest.approx(vt.start + 10.5)


def test_observe_learns_limits_and_other_spenders() -> None:
    now = [0.0]
    pacer = WindowPacer(clock=lambda: now[0])
    assert pacer._try_take() == 0.0  # our one send
    pacer.observe({"X-RateLimit-Max": "50", "X-RateLimit-Interval-Milliseconds": "2000",
                   "X-RateLimit-Remaining": "10", "X-RateLimit-Daily-Remaining": "999"})
    assert pacer.max_requests == 50 and pacer.interval == 2.0
    assert pacer.snapshot.remaining == 10 and pacer.snapshot.daily_remaining == 999
    # 10 remaining minus 3 headroom: only 7 more sends fit until the window ages out.
    taken = 0
    while pacer._try_take() == 0.0:
        taken += 1
    assert taken == 7
    now[0] = 2.2  # window (2 s + 5 %) has passed
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
