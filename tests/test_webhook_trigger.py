"""Bursts coalesced: one apply running and one queued per location, one event per interval."""

from __future__ import annotations

import asyncio
import time

from mailsync.webhook.trigger import ApplyCoalescer, DebouncedEmitter, Next, in_daemon_thread


class SlowApply:
    """An apply that takes a while, counting how many run at once per location."""

    def __init__(self, seconds: float = 0.05, busy_first: int = 0,
                 fail_first: int = 0) -> None:
        self.seconds, self.busy_first, self.fail_first = seconds, busy_first, fail_first
        self.calls: list[str] = []
        self.running: dict[str, int] = {}
        self.most: dict[str, int] = {}

    async def __call__(self, location_id: str) -> Next:
        self.calls.append(location_id)
        self.running[location_id] = self.running.get(location_id, 0) + 1
        self.most[location_id] = max(self.most.get(location_id, 0), self.running[location_id])
        try:
            await asyncio.sleep(self.seconds)
            if self.fail_first > 0:
                self.fail_first -= 1
                raise RuntimeError("HighLevel refused the token")
            if self.busy_first > 0:
                self.busy_first -= 1
                return Next.retry
            return Next.idle
        finally:
            self.running[location_id] -= 1


async def _settle(trigger: ApplyCoalescer) -> None:
    for _ in range(400):
        await asyncio.sleep(0.01)
        if not trigger.busy():
            return
    raise AssertionError("applies did not finish")


def test_a_burst_of_200_webhooks_runs_one_apply_and_queues_one_more():
    async def scenario() -> tuple[SlowApply, ApplyCoalescer]:
        apply = SlowApply()
        trigger = ApplyCoalescer(apply)
        for i in range(200):
            trigger.notify("loc-a")
            if i % 50 == 0:
                trigger.notify("loc-b")
            await asyncio.sleep(0)  # webhooks arrive while the apply runs
        await _settle(trigger)
        return apply, trigger

    apply, trigger = asyncio.run(scenario())
    assert apply.calls.count("loc-a") == 2 and trigger.applies("loc-a") == 2
    assert apply.most == {"loc-a": 1, "loc-b": 1}  # never two at once for a location
    assert apply.calls.count("loc-b") == 2  # locations are independent


def test_a_notice_after_the_apply_ends_starts_a_new_one():
    async def scenario() -> SlowApply:
        apply = SlowApply(seconds=0.01)
        trigger = ApplyCoalescer(apply)
        trigger.notify("loc")
        await _settle(trigger)
        trigger.notify("loc")
        await _settle(trigger)
        return apply

    assert asyncio.run(scenario()).calls == ["loc", "loc"]


def test_a_lease_held_elsewhere_is_tried_again_and_a_failure_waits_for_the_next_notice():
    async def scenario() -> tuple[SlowApply, SlowApply]:
        busy = SlowApply(seconds=0.01, busy_first=3)
        trigger = ApplyCoalescer(busy, retry_delay=0.01)
        trigger.notify("loc")
        await _settle(trigger)
        failing = SlowApply(seconds=0.01, fail_first=1)
        again = ApplyCoalescer(failing)
        again.notify("loc")
        await _settle(again)
        again.notify("loc")  # the next webhook tries again
        await _settle(again)
        return busy, failing

    busy, failing = asyncio.run(scenario())
    assert len(busy.calls) == 4  # three times busy, then done
    assert len(failing.calls) == 2


def test_closing_stops_new_applies():
    async def scenario() -> SlowApply:
        apply = SlowApply(seconds=0.2)
        trigger = ApplyCoalescer(apply)
        trigger.notify("loc")
        await asyncio.sleep(0.01)
        trigger.notify("loc")
        await trigger.aclose()
        trigger.notify("loc")
        await asyncio.sleep(0.05)
        return apply

    assert asyncio.run(scenario()).calls == ["loc"]


def test_the_prefect_emitter_announces_a_burst_once_then_once_per_interval():
    sent: list[str] = []

    async def scenario() -> DebouncedEmitter:
        emitter = DebouncedEmitter(sent.append, interval=0.2)
        for _ in range(100):  # a burst: one announcement
            emitter.notify("loc")
        emitter.notify("other")
        await asyncio.sleep(0.05)
        assert sorted(sent) == ["loc", "other"]
        emitter.notify("loc")  # within the interval: announced at its end, once
        emitter.notify("loc")
        await asyncio.sleep(0.05)
        assert sent.count("loc") == 1
        await asyncio.sleep(0.25)
        assert sent.count("loc") == 2
        await asyncio.sleep(0.25)
        emitter.notify("loc")  # a quiet interval later: at once
        await asyncio.sleep(0.05)
        assert sent.count("loc") == 3
        emitter.notify("loc")  # too soon: due at the interval's end...
        await emitter.aclose()  # ...or now, when the receiver stops
        return emitter

    emitter = asyncio.run(scenario())
    assert sent.count("loc") == 4 and sent.count("other") == 1
    assert emitter.emitted("loc") == 4


class Store:
    """What the receiver reads: who holds the location's lease, and what waits."""

    def __init__(self) -> None:
        self.holder: str | None = None
        self.waiting = 0

    def busy(self, location_id: str) -> bool:
        return self.holder is not None

    def has_waiting(self, location_id: str) -> bool:
        return self.waiting > 0


def emitter_over(store: Store, sent: list[str], give_up_after: float = 5) -> DebouncedEmitter:
    return DebouncedEmitter(sent.append, interval=0.01, busy=store.busy,
                            waiting=store.has_waiting, check_every=0.01,
                            give_up_after=give_up_after)


def test_one_run_per_location_while_it_applies_and_stays():
    sent: list[str] = []
    store = Store()

    async def scenario() -> None:
        emitter = emitter_over(store, sent)
        store.waiting = 1
        emitter.notify("loc")
        await asyncio.sleep(0.05)
        assert sent == ["loc"]
        for _ in range(20):  # webhooks while the announced run is starting
            store.waiting += 1
            emitter.notify("loc")
            await asyncio.sleep(0.002)
        assert sent == ["loc"]
        store.holder = "the-run"  # it started: it applies, and stays for more
        for _ in range(20):
            emitter.notify("loc")
            await asyncio.sleep(0.002)
        store.waiting = 0
        await asyncio.sleep(0.05)
        assert sent == ["loc"]  # the staying run took the stream
        store.holder = None  # it left; a webhook after that: a new run
        store.waiting = 1
        emitter.notify("loc")
        await asyncio.sleep(0.05)
        assert sent == ["loc", "loc"]
        await emitter.aclose()

    asyncio.run(scenario())


def test_writes_left_after_a_run_ends_are_announced_again_and_nothing_when_none_wait():
    sent: list[str] = []
    store = Store()

    async def scenario() -> None:
        emitter = emitter_over(store, sent)
        emitter.notify("quiet")  # a notice with nothing waiting (a redelivery): no run
        await asyncio.sleep(0.03)
        assert sent == []
        store.waiting, store.holder = 1, "the-schedule"  # the schedule holds it: wait
        emitter.notify("loc")
        await asyncio.sleep(0.05)
        assert sent == []
        store.holder = None  # it left rows behind (planned after it listed them)
        await asyncio.sleep(0.05)
        assert sent == ["loc"]
        await emitter.aclose()

    asyncio.run(scenario())


def test_a_run_that_never_starts_is_announced_again():
    sent: list[str] = []
    store = Store()
    store.waiting = 1

    async def scenario() -> None:
        emitter = emitter_over(store, sent, give_up_after=0.1)
        emitter.notify("loc")
        await asyncio.sleep(0.05)
        assert sent == ["loc"]
        await asyncio.sleep(0.12)
        assert sent == ["loc", "loc"]
        await emitter.aclose()

    asyncio.run(scenario())


def test_an_emitter_that_fails_is_logged_and_the_receiver_goes_on(caplog):
    def emit(location_id: str) -> None:
        raise RuntimeError("Prefect did not take the event")

    async def scenario() -> None:
        emitter = DebouncedEmitter(emit, interval=0.01)
        emitter.notify("loc")
        await asyncio.sleep(0.05)
        emitter.notify("loc")
        await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert sum("could not announce" in r.getMessage() for r in caplog.records) == 2


def test_a_daemon_thread_hands_back_its_result_and_its_error():
    async def scenario() -> tuple[int, str]:
        value = await in_daemon_thread(lambda: 41 + 1)
        try:
            await in_daemon_thread(lambda: 1 / 0)
        except ZeroDivisionError as exc:
            return value, type(exc).__name__
        return value, ""

    started = time.monotonic()
    assert asyncio.run(scenario()) == (42, "ZeroDivisionError")
    assert time.monotonic() - started < 5
