"""After a commit, the writes: started within seconds, bursts coalesced per location.

Two triggers, one interface (`notify(location_id)`, called on the receiver's event loop
after the 202's commit):

- `ApplyCoalescer` (mode `inline`): per location one running apply and a *dirty* flag. A
  notice during an apply sets the flag; the apply, once finished, runs once more. However
  many webhooks a burst brings, a location has at most one apply running and one queued.
  The apply holds the location's lease, like the scheduled sync: when the sync has it, the
  apply tries again shortly (the sync may have listed its rows before these were planned).
- `DebouncedEmitter` (mode `prefect`): calls an injected emitter (a Prefect event, built in
  `tasks/`) at most once per location per interval, and only while writes wait and nobody
  holds the location's lease (the triggered run holds it while it applies and while it
  stays for more webhooks), so a burst or a steady stream keeps one flow run per location,
  not hundreds queued for the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, TypeVar

from mailsync.redact import get_logger

log = get_logger("mailsync.webhook")

LOCATION_EVENT = "mailsync.location.writes-planned"
"""The Prefect event the receiver emits in `prefect` mode (prefect.yaml's trigger expects it);
its resource is `mailsync.location.<location id>`, named by the location id."""
LOCATION_RESOURCE_PREFIX = "mailsync.location."

T = TypeVar("T")


class Trigger(Protocol):
    """What the receiver calls once a webhook's writes are committed."""

    def notify(self, location_id: str) -> None:
        """The location has new writes planned (called on the event loop)."""

    async def aclose(self) -> None:
        """Stop: no new work starts; work under way is left to finish or to the ledger."""


class Next(StrEnum):
    """What a location's apply says should happen next."""

    idle = "idle"
    """Done (or stopped for a reason another try now would not change)."""
    retry = "retry"
    """Another holder has the location's lease: try again shortly."""


def in_daemon_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Run `fn` in a daemon thread of its own; its result as a future of this loop.

    A daemon thread, so that stopping the receiver never waits for a long apply: what it
    left unfinished is in the ledger, which the next apply or sync resumes.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(setter: Callable[..., None], value: object) -> None:
        if not future.done():
            setter(value)

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting coroutine, never lost
            outcome: tuple[Callable[..., None], object] = (future.set_exception, exc)
        else:
            outcome = (future.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=target, name="mailsync-apply", daemon=True).start()
    return future


@dataclass
class _Location:
    task: asyncio.Task[None] | None = None
    dirty: bool = False
    applies: int = 0


@dataclass
class ApplyCoalescer:
    """Inline mode: at most one apply running per location, and one more queued."""

    apply: Callable[[str], Awaitable[Next]]
    """Apply one location's open writes; says whether to try again shortly."""
    retry_delay: float = 2.0
    _locations: dict[str, _Location] = field(default_factory=dict)
    _closed: bool = False

    def notify(self, location_id: str) -> None:
        """Start the location's apply, or mark it dirty if one is running."""
        if self._closed:
            return
        state = self._locations.setdefault(location_id, _Location())
        if state.task is not None and not state.task.done():
            state.dirty = True
            return
        state.dirty = False
        state.task = asyncio.get_running_loop().create_task(self._run(location_id, state))

    async def _run(self, location_id: str, state: _Location) -> None:
        while not self._closed:
            state.dirty = False
            state.applies += 1
            try:
                after = await self.apply(location_id)
            except Exception as exc:  # the next webhook or the schedule tries again
                log.error("location %s: apply after webhooks failed: %s", location_id, exc)
                after = Next.idle
            if after == Next.retry:
                await asyncio.sleep(self.retry_delay)
                continue
            if not state.dirty:
                return

    def applies(self, location_id: str) -> int:
        """How many applies this location has had (for tests and the benchmark)."""
        state = self._locations.get(location_id)
        return state.applies if state else 0

    def busy(self) -> bool:
        """Whether any location's apply is running or queued."""
        return any(s.task is not None and not s.task.done() for s in self._locations.values())

    async def aclose(self) -> None:
        """No new applies; those running are cancelled (their threads finish on their own
        or die with the process: the ledger keeps what they did)."""
        self._closed = True
        tasks = [s.task for s in self._locations.values() if s.task and not s.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class _Emits:
    last: float = float("-inf")
    dirty: bool = False
    run_seen: bool = True
    """Whether the run last announced has been seen at work (or is no longer needed)."""
    task: asyncio.Task[None] | None = None
    sent: int = 0


@dataclass
class DebouncedEmitter:
    """Prefect mode: the injected emitter, at most once per location per `interval` s.

    Given `busy` and `waiting` (read from the store), it keeps one run per location: it
    announces a location only when writes wait, nobody holds the location's lease (a run
    that is applying, or staying for more webhooks, holds it), and the run it announced last
    has been seen at work or `give_up_after` has passed (a run that failed to start).
    """

    emit: Callable[[str], None]
    """Announce that a location has writes planned (e.g. emit a Prefect event)."""
    interval: float = 5.0
    busy: Callable[[str], bool] | None = None
    """Whether someone holds the location's lease now (a run, or the schedule)."""
    waiting: Callable[[str], bool] | None = None
    """Whether the location has writes planned and not yet sent."""
    give_up_after: float = 120.0
    check_every: float = 1.0
    clock: Callable[[], float] = time.monotonic
    _locations: dict[str, _Emits] = field(default_factory=dict)
    _closed: bool = False

    def notify(self, location_id: str) -> None:
        """Mark the location; its watcher announces it as soon as the rules allow."""
        if self._closed:
            return
        state = self._locations.setdefault(location_id, _Emits())
        state.dirty = True
        if state.task is None or state.task.done():
            state.task = asyncio.get_running_loop().create_task(
                self._watch(location_id, state))

    async def _watch(self, location_id: str, state: _Emits) -> None:
        while not self._closed:
            if self.busy is None or self.waiting is None:
                if not state.dirty:
                    return
                await asyncio.sleep(max(0.0, state.last + self.interval - self.clock()))
                state.dirty = False
                await self._announce(location_id, state)
                continue
            state.dirty = False
            if await self._ask(self.busy, location_id):
                state.run_seen = True
            elif not await self._ask(self.waiting, location_id, default=True):
                state.run_seen = True  # whoever it was, the writes are done
                if not state.dirty:
                    return
                continue
            elif self._due(state):
                await self._announce(location_id, state)
            await asyncio.sleep(self.check_every)

    def _due(self, state: _Emits) -> bool:
        since = self.clock() - state.last
        return since >= self.interval and (state.run_seen or since >= self.give_up_after)

    async def _ask(self, question: Callable[[str], bool], location_id: str,
                   default: bool = False) -> bool:
        try:
            return await asyncio.to_thread(question, location_id)
        except Exception as exc:  # the store failed: ask again at the next check
            log.warning("location %s: could not read the store: %s", location_id, exc)
            return default

    async def _announce(self, location_id: str, state: _Emits) -> None:
        state.last, state.run_seen = self.clock(), False
        state.sent += 1
        # The emitter may block on the network: keep it off the event loop.
        await asyncio.to_thread(self._emit_logged, location_id)

    def _emit_logged(self, location_id: str) -> None:
        try:
            self.emit(location_id)
        except Exception as exc:  # the schedule writes them anyway: say so, carry on
            log.error("location %s: could not announce new writes: %s", location_id, exc)

    def emitted(self, location_id: str) -> int:
        """How many announcements this location has had."""
        state = self._locations.get(location_id)
        return state.sent if state else 0

    async def aclose(self) -> None:
        """Stop watching. Without the store's answers, a location marked since its last
        announcement is announced once more now."""
        self._closed = True
        tasks = [s.task for s in self._locations.values() if s.task and not s.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.waiting is not None:
            return  # what waits is in the ledger: the next receiver or the schedule has it
        for location_id, state in self._locations.items():
            if state.dirty:
                state.dirty = False
                state.sent += 1
                await asyncio.to_thread(self._emit_logged, location_id)
