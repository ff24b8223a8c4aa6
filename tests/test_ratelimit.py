"""Pacers with an injected clock: fixed-rate spacing, window budget, learning from headers."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest

from mailsync.clients.ratelimit import (
    FixedRateLimiter,
    WindowPacer,
    highlevel_pacer,
    key_fingerprint,
    postalytics_limiter,
)
from tests.clock import VirtualTime


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


Legs = Callable[[random.Random], tuple[float, float]]


def uneven(out: tuple[float, float], back: tuple[float, float]) -> Legs:
    """Each leg drawn on its own: a random `out` delay, then a random `back` delay."""
    return lambda rng: (rng.uniform(*out), rng.uniform(*back))


def arrivals_of(pacer: WindowPacer, vt: VirtualTime, n: int, seed: int,
                legs: Legs) -> list[float]:
    """Send `n` concurrent requests through the pacer as a server would see them: each
    arrives its `legs`' first delay after its send (where the server counts it) and is
    answered the second delay later. Returns the arrival times."""
    rng = random.Random(seed)
    arrivals: list[float] = []

    async def one() -> None:
        async with pacer.slot():
            out, back = legs(rng)
            await vt.sleep(out)
            arrivals.append(vt.now)
            await vt.sleep(back)

    async def many() -> None:
        await asyncio.gather(*(one() for _ in range(n)))

    run(many())
    return sorted(arrivals)


def most_in_any_window(times: list[float], window: float) -> int:
    """The largest number of `times` inside any half-open span of `window` seconds."""
    return max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times))


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
    assert most_in_any_window(stamps, 10.0) <= 98
    assert stamps[97] == vt.start and stamps[98] == pytest.approx(vt.start + 10.1)


def test_steady_latency_within_the_slack_costs_no_throughput() -> None:
    vt = VirtualTime()
    pacer = WindowPacer(10, 1.0, headroom=0.0, slack=0.3, clock=vt.clock, sleep=vt.sleep)
    # Every answer takes 0.3 s: the server counted each request on its way in, at the same
    # distance from its send, so sends a window (+ slack) apart stay that far apart there.
    # (Counting from the answers instead would stretch each window to 1.6 s.)
    stamps = stamps_of(pacer, vt, 40, hold=0.3)
    assert most_in_any_window(stamps, 1.0) <= 10
    assert stamps[-1] - stamps[0] == pytest.approx(3 * 1.3)  # 4 windows' worth


def test_a_round_trip_longer_than_the_slack_widens_the_window_by_itself() -> None:
    vt = VirtualTime()
    pacer = WindowPacer(10, 1.0, headroom=0.0, slack=0.0, clock=vt.clock, sleep=vt.sleep)
    # Its count may have been anywhere in its 0.3 s: each place is held a window after the
    # answer, the only moment known to follow the count.
    stamps = stamps_of(pacer, vt, 40, hold=0.3)
    assert stamps[-1] - stamps[0] == pytest.approx(3 * 1.3)


def test_a_slow_answer_holds_its_place_by_its_excess() -> None:
    now = [0.0]
    pacer = WindowPacer(1, 1.0, headroom=0.0, slack=0.1, clock=lambda: now[0])
    assert pacer._try_take() == 0.0
    now[0] = 0.1
    pacer.release(0.0)  # quickest round trip: 0.1 s, within the slack
    now[0] = 1.1
    assert pacer._try_take() == 0.0  # a window (+ slack) after the first send
    now[0] = 1.7
    pacer.release(1.1)  # 0.5 s slower than the quickest: the server may have counted it late
    now[0] = 2.0
    assert pacer._try_take() == pytest.approx(0.7)  # free at 1.7 - 0.1 + 1.1 = 2.7
    now[0] = 2.7
    assert pacer._try_take() == 0.0


def test_a_shorter_window_learned_never_frees_a_place_before_a_window_after_its_answer() -> None:
    now = [0.0]
    pacer = WindowPacer(1, 10.0, headroom=0.0, clock=lambda: now[0])
    assert pacer._try_take() == 0.0
    now[0] = 0.2
    pacer.release(0.0)  # booked under the 10 s window: 0.1 s (its slack) taken off the answer
    pacer.observe({"X-RateLimit-Interval-Milliseconds": "100"})
    now[0] = 0.25
    assert pacer._try_take() == pytest.approx(0.05)  # free at 0.2 + 0.1, not at 0.201
    now[0] = 0.3001
    assert pacer._try_take() == 0.0


def test_server_never_counts_more_when_requests_queue_before_their_count() -> None:
    # Every round trip takes about half a window, split at random between the queue before
    # the server counts a request and the way back: the estimate (answer minus the quickest
    # round trip) can then be early by most of it, far beyond a 1 % slack.
    def queued(rng: random.Random) -> tuple[float, float]:
        wait = rng.uniform(0.0, 0.05)
        return wait, 0.05 - wait + rng.uniform(0.0, 0.0005)

    vt = VirtualTime()
    pacer = WindowPacer(100, 0.1, clock=vt.clock, sleep=vt.sleep)
    assert most_in_any_window(arrivals_of(pacer, vt, 1000, 3, queued), 0.1) <= 100


# (pacer, its server's limit per window, outbound delays, answer delays): slow, uneven
# answers, and outbound jitter within each pacer's slack (5 % of 1 s; 1 % of 10 s).
SERVER_VIEWS = {
    "postalytics 3/s": (lambda vt: FixedRateLimiter(3, 1.0, clock=vt.clock, sleep=vt.sleep),
                        3, 1.0, 30, (0.1, 0.15), (0.1, 2.0)),
    "highlevel 100/10s": (lambda vt: WindowPacer(100, 10.0, clock=vt.clock, sleep=vt.sleep),
                          100, 10.0, 400, (0.05, 0.15), (0.05, 5.0)),
}


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("view", SERVER_VIEWS)
def test_server_never_counts_more_than_its_limit(view: str, seed: int) -> None:
    make, limit, window, n, out, back = SERVER_VIEWS[view]
    vt = VirtualTime()
    arrivals = arrivals_of(make(vt), vt, n, seed, uneven(out, back))
    assert most_in_any_window(arrivals, window) <= limit


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
    # 10 remaining minus 1 headroom (2 % of 50): only 9 more sends fit until the window ages.
    taken = 0
    while pacer._try_take() == 0.0:
        taken += 1
    assert taken == 9
    for _ in range(taken):
        pacer.release()
    now[0] = 2.2  # window (2 s + 1 %) has passed since the answers
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
    assert pacer._try_take() == pytest.approx(10.1)
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


def test_an_exhausted_day_is_asked_again_after_a_while() -> None:
    now = [0.0]
    pacer = WindowPacer(clock=lambda: now[0])
    pacer.observe({"X-RateLimit-Daily-Remaining": "5"})
    assert pacer.daily_exhausted(10)
    now[0] = pacer.daily_recheck + 1  # long enough for a new day to have begun
    assert not pacer.daily_exhausted(10)  # so a request goes out and its answer tells
    pacer.observe({"X-RateLimit-Daily-Remaining": "4"})
    assert pacer.daily_exhausted(10)  # still the same day
    now[0] += pacer.daily_recheck + 1
    pacer.observe({"X-RateLimit-Daily-Remaining": "200000"})
    assert not pacer.daily_exhausted(10) and pacer.daily_remaining() == 200_000


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


def taken_over(pacer: WindowPacer, vt: VirtualTime, spent: int, n: int = 40) -> list[int]:
    """A location whose last holder spent `spent` of HighLevel's 100 per 10 s just now, taken
    over by a worker that sends `n` requests, 8 at a time, through `pacer`; each answer says
    what remains of the server's window, as HighLevel's headers do. The server's answers: 200
    while the window has room, else 429."""
    window = [vt.now, spent]  # a fixed window's start and its count
    statuses: list[int] = []
    sem = asyncio.Semaphore(8)

    async def one() -> None:
        async with sem, pacer.slot():
            await vt.sleep(0.05)  # on its way
            if vt.now >= window[0] + 10.0:
                window[:] = [vt.now, 0]
            window[1] += 1
            statuses.append(200 if window[1] <= 100 else 429)
            await vt.sleep(0.05)
            pacer.observe({"X-RateLimit-Max": "100",
                           "X-RateLimit-Interval-Milliseconds": "10000",
                           "X-RateLimit-Remaining": str(max(0, 100 - window[1]))})

    async def many() -> None:
        await asyncio.gather(*(one() for _ in range(n)))

    run(many())
    return statuses


def test_a_location_taken_over_mid_window_draws_no_429() -> None:
    # The new holder's first request goes alone; its answer says 1 is left, so the rest wait
    # for the window to pass instead of going out 8 at once into a spent window.
    assert highlevel_pacer("loc-taken-over").probe
    vt = VirtualTime()
    statuses = taken_over(WindowPacer(probe=True, clock=vt.clock, sleep=vt.sleep), vt, 98)
    assert statuses.count(429) == 0 and len(statuses) == 40
    assert vt.elapsed > 10.0  # the rest went out in the next window
    # Without the probe, the first 8 go out together into the spent window.
    vt = VirtualTime()
    assert taken_over(WindowPacer(clock=vt.clock, sleep=vt.sleep), vt, 98).count(429) >= 6


def test_a_pacer_that_heard_nothing_lately_probes_again() -> None:
    now = [0.0]
    pacer = WindowPacer(100, 10.0, probe=True, clock=lambda: now[0])
    assert pacer._try_take() == 0.0
    assert pacer._try_take() > 0  # the probe is out: the rest wait for its answer
    now[0] = 0.1
    pacer.release(0.0)
    assert all(pacer._try_take() == 0.0 for _ in range(8))  # heard: as many as the window holds
    for _ in range(8):
        pacer.release()
    now[0] = 30.0  # a while without a request: someone else may have spent this window
    assert pacer._try_take() == 0.0 and pacer._try_take() > 0
