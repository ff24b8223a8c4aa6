"""Apply one location's ledger rows to HighLevel: resolve, settle, tag, note, record.

Per contact: one call removing retrigger tags, one call adding every new tag, then its notes
one by one. Before the first note this store sends to a contact, and whenever a note's fate is
`unknown`, the contact's notes are read and every planned note whose marker is already there is
done: a note is never sent twice, whichever store (or crash) sent it first. A note's row is
marked `unknown` (and committed) *before* its POST. A `done` row is never selected again.

Rows go in chunks of recipients, and the ledger's writes of a chunk in two commits: one with
what resolving found and every note of the chunk marked `unknown`, before the first POST; one
with the chunk's outcomes, which is the next chunk's first (or the pass's last). A crash in
between costs the next run one read of each such contact's notes, never a note twice. The
statements live in `store.ledger`; this module is the procedure.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy.engine import Engine

from mailsync.clients.auth import AuthError, RefreshFailure
from mailsync.clients.highlevel import HighLevelClient
from mailsync.clients.http import DEFAULT_CONNECTIONS, Outcome
from mailsync.codes import RESPONSE_CODES, EventCode, WriteClass, tag_key
from mailsync.store import ledger
from mailsync.store.leases import DEFAULT_TTL, HeldLease, hold_lease
from mailsync.store.ledger import (
    MAX_AUTO_ATTEMPTS,
    SYNC_STATUSES,
    LedgerRow,
    RowOutcome,
    Selection,
)
from mailsync.store.models import WriteKind, WriteStatus
from mailsync.store.reasons import Reason
from mailsync.sync import failpoints
from mailsync.sync.notes import already_there
from mailsync.sync.resolve import (
    Resolution,
    Resolved,
    ask,
    cached,
    forget_contact,
    known_contacts,
    load_recipients,
)


class Stop(StrEnum):
    """Why an apply stopped before every selected row was tried."""

    lease_held_elsewhere = "another worker holds this location's lease"
    lease_lost = "lost the location's lease to another worker"
    daily_quota = "HighLevel's daily request budget for the location is nearly spent"
    unreachable = "HighLevel did not answer; the location's other writes wait for the next run"


@dataclass
class ApplyResult:
    """What one location's apply did."""

    location_id: str
    outcomes: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    settle_reads: int = 0
    """Of `calls`, the reads of a contact's notes before this store's first note to it."""
    stopped: Stop | None = None

    def count(self, status: str, n: int = 1) -> None:
        """Add n rows that ended with this status."""
        self.outcomes[status] = self.outcomes.get(status, 0) + n


@dataclass
class ApplyOptions:
    """Which rows to apply and how (sync and replay differ only here)."""

    statuses: Sequence[WriteStatus] = SYNC_STATUSES
    drop_ids: Sequence[str] | None = None
    since: datetime | None = None
    max_failed_attempts: int | None = MAX_AUTO_ATTEMPTS
    reresolve: bool = False
    create_missing: frozenset[str] = frozenset()
    """Drop ids whose recipients without a contact get one created (upsert, no tags)."""
    concurrency: int = DEFAULT_CONNECTIONS
    """Calls in flight at once: the client's pool holds as many connections."""
    chunk_recipients: int = 200
    holder: str | None = None
    lease_ttl: timedelta = DEFAULT_TTL
    write_order: tuple[WriteClass, ...] = tuple(WriteClass)
    """The order of an apply's passes: when the daily budget runs short, what matters most
    has gone first (and the calls are the same as one pass: a contact's tags were one call
    and its notes one call each either way)."""

    def selection(self, location_id: str) -> Selection:
        """The ledger rows of a location these options select."""
        return Selection(location_id, tuple(self.statuses), self.drop_ids, self.since,
                         self.max_failed_attempts)


T = TypeVar("T")
Progress = Callable[[str, int], None]
_NO_ANSWER = (RefreshFailure.unreachable, RefreshFailure.failed)
"""OAuth refresh failures that say nothing about the token: the token endpoint did not answer."""
_STATUS_OF = {"ok": WriteStatus.done, "rejected": WriteStatus.rejected,
              "failed": WriteStatus.failed, "unknown": WriteStatus.unknown,
              "deferred": WriteStatus.pending}


def row_outcomes(rows: Sequence[LedgerRow], outcome: Outcome) -> list[RowOutcome]:
    """What a call's outcome means for each of its rows, with the reason typed."""
    status = _STATUS_OF[outcome.status]
    reason: Reason | None = None
    clear = False
    attempt = True
    if status == WriteStatus.rejected and outcome.contact_gone:
        # The contact is gone: resolve the recipient again next run (it may be re-created).
        status, reason, clear = WriteStatus.pending, Reason.contact_gone, True
    elif status == WriteStatus.rejected:
        reason = Reason.token_refused if outcome.http_status in (401, 403) else Reason.refused
    elif status == WriteStatus.failed:
        reason = Reason.unanswered
    elif status == WriteStatus.unknown:
        reason = Reason.sent_unanswered
    elif status == WriteStatus.pending:  # deferred: not sent for the daily quota
        reason, attempt = Reason.daily_quota, False
    done = status == WriteStatus.done
    return [RowOutcome(r.id, status, reason, None if done else outcome.reason,
                       outcome.http_status, outcome.remote_id if done else None, clear, attempt)
            for r in rows]


class _Applier:
    """One location's apply, chunk by chunk: the ledger's writes of a chunk wait in one
    `ledger.Batch`, stored in two commits (before its first note is sent, and at its end),
    or in one when it has no note to send."""

    def __init__(self, engine: Engine, hl: HighLevelClient, location_id: str,
                 opts: ApplyOptions, progress: Progress | None) -> None:
        self.engine, self.hl, self.location_id = engine, hl, location_id
        self.opts, self.progress = opts, progress
        self.selection = opts.selection(location_id)
        self.result = ApplyResult(location_id)
        self.stop: Stop | None = None
        self.lease: HeldLease | None = None
        self.settled: set[str] = set()
        self.batch = ledger.Batch(location_id)
        self.sent: set[int] = set()
        """Notes of the chunk whose POST has started (whatever came of it)."""
        self.told: set[int] = set()
        """Rows of the chunk with an outcome queued."""
        self.resolutions: dict[tuple[str, str], Resolution] = {}
        """(drop id, recipient key) → what resolving gave, in an earlier pass or chunk: what
        the store's links would give again, without reading the recipient's events."""
        self.tag_links: list[tuple[int, str]] = []
        """Tag rows of the chunk resolved to a contact: stored with their outcomes, in one
        UPDATE each (a crash before loses only cached work: the contact's link is stored)."""

    @property
    def stopping(self) -> Stop | None:
        """Why no further write should start now, if anything says so."""
        if self.lease is not None and self.lease.lost:
            return Stop.lease_lost
        return self.stop

    def _done(self, status: str, n: int = 1) -> None:
        self.result.count(status, n)
        if self.progress:
            self.progress(self.location_id, n)

    def _queue(self, outcomes: Iterable[RowOutcome]) -> None:
        """Queue outcomes for the chunk's last commit, and count them."""
        for o in outcomes:
            self.batch.outcomes.append(o)
            self.told.add(o.row_id)
            self._done(o.status)

    def _record(self, rows: Sequence[LedgerRow], outcome: Outcome) -> None:
        """Queue a call's outcome for its rows; a call not sent for the daily quota stops
        the apply."""
        self.result.calls += 1
        if outcome.status == "deferred":
            self.stop = Stop.daily_quota
        self._stop_if_unreachable(outcome.unreachable)
        self._queue(row_outcomes(rows, outcome))

    def _stop_if_unreachable(self, unreachable: bool) -> None:
        """One call that never reached HighLevel stops the location: every other contact's
        calls would each wait out their retries (20 contacts took ~30 s with it down)."""
        if unreachable:
            self.stop = Stop.unreachable

    async def run_chunk(self, sel: Selection, ids: list[int]) -> None:
        """Resolve, then write the chunk's contacts side by side.

        Its notes are all marked `unknown` in the commit that also stores what resolving
        found, before any is sent; a crash from then on leaves them `unknown`, which the next
        run settles by their markers (reading each such contact's notes once), so a note is
        never sent twice. A chunk with no note to send (the tags pass's) has no such commit:
        what resolving found waits for its outcomes (a crash loses only cached work). The
        chunk's outcomes, each tag row's with its contact, are stored together: a notes
        chunk's in the next chunk's first commit (or when the pass ends), since each commit
        rewrites most of the location's ledger pages; any other chunk's, and one that fails,
        when it ends. Notes never sent get their status back, unless the lease was lost and
        another worker may already be settling them.
        """
        rows = await _on_store(ledger.rows_of, self.engine, sel, ids)
        if self.opts.reresolve:
            for r in rows:
                if r.status == WriteStatus.rejected:
                    r.contact_id = None
        marked: list[LedgerRow] = []
        self.sent, self.told = set(), set()
        ended = False
        try:
            await self._resolve([r for r in rows if r.contact_id is None])
            by_contact: dict[str, list[LedgerRow]] = defaultdict(list)
            for r in rows:
                if r.contact_id is not None:
                    by_contact[r.contact_id].append(r)
            self.settled = await _on_store(ledger.settled_contacts, self.engine,
                                           self.location_id, list(by_contact))
            self.settled.update(self.batch.settled)  # the last chunk's, not stored yet
            if not self.stopping:
                marked = [r for r in rows if r.contact_id is not None
                          and r.kind == WriteKind.note and r.id not in self.told]
                self.batch.sending = [r.id for r in marked]
            if marked:  # else nothing must be stored before the writes: one commit, at the end
                self.batch.marked_at = await self._store()
            await _side_by_side(self._contact, list(by_contact.items()), self.opts.concurrency)
            ended = True
        finally:
            lost = self.lease is not None and self.lease.lost
            # Once the lease is lost, another worker may be writing these rows: only those
            # with an outcome of ours get their contact.
            self.batch.links.extend(lk for lk in self.tag_links if not lost or lk[0] in self.told)
            self.tag_links = []
            self.batch.sending = []  # only ever stored before the chunk's first note
            if lost:
                self.batch.unsent = []
            else:
                self.batch.unsent += [r for r in marked
                                      if r.id not in self.sent and r.id not in self.told]
            if not (marked and ended):
                await self._store()

    async def store_pending(self) -> None:
        """Store what the last chunk left for the next one's first commit."""
        if self.batch:
            await self._store()

    async def _store(self) -> datetime:
        """Write what the batch holds and start a new one (swapped first: other contacts may
        queue outcomes while a thread writes it); the time stamped."""
        batch = self.batch
        self.batch = ledger.Batch(self.location_id, marked_at=batch.marked_at)
        return await _on_store(ledger.write, self.engine, batch)

    async def _resolve(self, rows: list[LedgerRow]) -> None:
        if not rows:
            return
        pairs: dict[tuple[str, str], list[LedgerRow]] = defaultdict(list)
        for r in rows:
            pairs[(r.drop_id, r.recipient_key)].append(r)
        for pair in [p for p in pairs if p in self.resolutions]:
            failpoints.hit("resolved")
            self._resolved(pair, pairs.pop(pair), self.resolutions[pair])
        if not pairs:
            return
        who = await _on_store(load_recipients, self.engine, set(pairs))
        known = await _on_store(known_contacts, self.engine, self.location_id,
                                list(who.values()))
        asks: list[tuple[tuple[str, str], list[LedgerRow]]] = []
        try:
            for pair, its_rows in pairs.items():
                if pair not in who:
                    self._queue(RowOutcome(r.id, WriteStatus.rejected, Reason.event_gone,
                                           attempt=False) for r in its_rows)
                    continue
                res = cached(who[pair], known, self.opts.reresolve)
                if res is None:
                    asks.append((pair, its_rows))
                else:
                    failpoints.hit("resolved")
                    self._resolved(pair, its_rows, res)

            async def one(pair: tuple[str, str], its_rows: list[LedgerRow]) -> None:
                if self.stopping:
                    return
                res = await ask(self.hl, known, who[pair],
                                create_missing=pair[0] in self.opts.create_missing)
                self._stop_if_unreachable(res.unreachable)
                failpoints.hit("resolved")
                self._resolved(pair, its_rows, res)

            await _side_by_side(one, asks, self.opts.concurrency)
        finally:
            # The links found go with the chunk's first commit (a crash loses only cached
            # work: HighLevel is asked again).
            self.batch.found.extend(known.found)

    def _resolved(self, pair: tuple[str, str], rows: list[LedgerRow],
                  res: Resolution) -> None:
        """Point the rows at their contact, or queue why they have none; a contact, or a
        miss stored as such, holds for the recipient's rows in the apply's later passes."""
        if res.contact_id or (res.reason == Reason.no_contact and not self.opts.reresolve):
            self.resolutions[pair] = res
        if res.contact_id:
            # A note's contact is stored before it is sent: a crash then settles it there.
            for r in rows:
                links = self.batch.links if r.kind == WriteKind.note else self.tag_links
                links.append((r.id, res.contact_id))
                r.contact_id, r.status = res.contact_id, WriteStatus.pending
            return
        final = res.status == Resolved.rejected
        status = WriteStatus.rejected if final else WriteStatus.pending
        self._queue(RowOutcome(r.id, status, res.reason, res.detail, res.http_status,
                               attempt=final) for r in rows)

    async def _contact(self, contact_id: str, rows: list[LedgerRow]) -> None:
        if self.stopping:
            return
        c = _Contact(contact_id, rows)
        notes = sorted((r for r in rows if r.kind == WriteKind.note), key=lambda r: r.id)
        if notes and (contact_id not in self.settled
                      or any(n.status == WriteStatus.unknown for n in notes)):
            notes = await self._settle(c, notes)
        for kind, call in ((WriteKind.untag, self.hl.remove_tags),
                           (WriteKind.tag, self.hl.add_tags)):
            batch = [r for r in rows if r.kind == kind]
            if batch and not self.stopping and c.gone is None:
                await self._tags(c, batch, call, check=kind == WriteKind.tag)
        if c.gone is not None:
            self._forget(c, rows)
            return
        await self._notes(c, notes)

    def _forget(self, c: _Contact, rows: Iterable[LedgerRow]) -> None:
        """HighLevel no longer knows the contact: its open rows are resolved again next run."""
        forget_contact(self.engine, self.location_id, {r.recipient_key for r in c.rows}, c.id)
        self.resolutions = {p: r for p, r in self.resolutions.items() if r.contact_id != c.id}
        self.batch.found = [f for f in self.batch.found if f[1] != c.id]
        self._queue(RowOutcome(r.id, WriteStatus.pending, Reason.contact_gone, c.gone,
                               clear_contact=True)
                    for r in rows if r.id not in self.told)

    async def _settle(self, c: _Contact, notes: list[LedgerRow]) -> list[LedgerRow]:
        """Read the contact's notes; every planned note whose marker is there is done.
        Returns the notes still to send: none of the doubtful ones when the read failed."""
        first = c.id not in self.settled
        listing = await self.hl.list_notes(c.id)
        self.result.calls += 1
        self.result.settle_reads += first
        if listing.status != "ok":
            self._stop_if_unreachable(listing.unreachable)
            if listing.contact_gone:
                c.gone = listing.reason
            # Cannot tell which notes landed. Before this store's first note to the contact
            # every note is doubtful; after it, only the `unknown` ones.
            return [] if first else [n for n in notes if n.status != WriteStatus.unknown]
        still: list[LedgerRow] = []
        for note in notes:
            remote_id = already_there(listing.data, note.marker or "")
            if remote_id is None:
                still.append(note)
            else:
                self._queue([RowOutcome(note.id, WriteStatus.done, remote_id=remote_id,
                                        attempt=False)])
        # Stored in the same commit as the notes found there, never before them.
        self.batch.settled.append(c.id)
        self.settled.add(c.id)
        return still

    async def _tags(self, c: _Contact, batch: list[LedgerRow], call: Any,
                    check: bool) -> None:
        wanted: dict[str, str] = {}
        for r in batch:
            wanted.setdefault(tag_key(r.tag or ""), r.tag or "")
        failpoints.hit("before-tags-post")
        outcome = await call(c.id, list(wanted.values()))
        failpoints.hit("after-tags-post")
        if outcome.status == "unknown":  # tag writes are idempotent: just send again later
            outcome = outcome.model_copy(update={"status": "failed"})
        if check and outcome.ok and isinstance(outcome.data, list):
            kept = {tag_key(str(t)) for t in outcome.data}
            missing = [r for r in batch if tag_key(r.tag or "") not in kept]
            self._queue(RowOutcome(r.id, WriteStatus.failed, Reason.tag_missing,
                                   http_status=outcome.http_status) for r in missing)
            batch = [r for r in batch if r not in missing]
        if outcome.contact_gone:
            c.gone = outcome.reason
        self._record(batch, outcome)

    async def _notes(self, c: _Contact, notes: list[LedgerRow]) -> None:
        """POST a contact's notes one by one (each already `unknown` in the store)."""
        for note in notes:
            if self.stopping or c.gone is not None:
                break
            failpoints.hit("before-note-post")
            self.sent.add(note.id)
            outcome = await self.hl.create_note(c.id, note.body or "")
            failpoints.hit("after-note-post")
            if outcome.contact_gone:
                c.gone = outcome.reason
            self._record([note], outcome)
        if c.gone is not None:
            self._forget(c, [n for n in notes if n.id not in self.sent])
        failpoints.hit("note-recorded")


@dataclass
class _Contact:
    """One contact's rows while they are applied."""

    id: str
    rows: list[LedgerRow]
    gone: str | None = None
    """HighLevel's words when it said the contact does not exist."""


async def _on_store(fn: Callable[..., T], engine: Engine, *args: Any) -> T:
    """A store call of the apply, where it costs least (bench/RESULTS.md, section 3).

    PostgreSQL: in a worker thread. One worker applies many locations in one event loop, and
    a loop held up by round trips and other workers' locks delays every location's HTTP
    answers, which skews their pacing (section 7). SQLite: on the loop. A local file answers
    a chunk's reads and writes in milliseconds, and pysqlite releases the GIL at every row it
    steps, so from a thread each row cost two GIL hand-offs with the loop: 58 µs of CPU a row
    against 8, and nearly a third of a 10,000-event sync's CPU.
    """
    if engine.dialect.name == "sqlite":
        return fn(engine, *args)
    return await asyncio.to_thread(fn, engine, *args)


async def _side_by_side(work: Callable[..., Awaitable[None]], calls: Sequence[tuple[Any, ...]],
                        at_once: int) -> None:
    """`work(*args)` for each of `calls` in order, at most `at_once` running; the first error
    cancels the rest. A few workers each taking the next call, not a task per call waiting for
    its turn: each such task cost the event loop about 4 us more (a chunk has hundreds)."""
    pending = iter(calls)

    async def worker() -> None:
        for args in pending:
            await work(*args)

    await _all_or_first_error(worker() for _ in range(min(at_once, len(calls))))


async def _all_or_first_error(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run side by side; the first error cancels the rest (rather than leaving them running
    against a client about to close) and is raised as itself, not as a group."""
    try:
        async with asyncio.TaskGroup() as tg:
            for coro in coros:
                tg.create_task(coro)
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None


async def apply_location(engine: Engine, hl: HighLevelClient, location_id: str,
                         opts: ApplyOptions | None = None,
                         progress: Progress | None = None) -> ApplyResult:
    """Apply every selected ledger row of one location; holds the location's lease if asked."""
    opts = opts or ApplyOptions()
    applier = _Applier(engine, hl, location_id, opts, progress)
    if not opts.holder:
        await _apply_rows(applier)
        return applier.result
    async with hold_lease(engine, location_id, opts.holder, opts.lease_ttl) as lease:
        if lease is None:
            applier.result.stopped = Stop.lease_held_elsewhere
            return applier.result
        applier.lease = lease
        await _apply_rows(applier)
    return applier.result


async def _apply_rows(applier: _Applier) -> None:
    engine, opts, sel = applier.engine, applier.opts, applier.selection
    try:
        try:
            for cls in opts.write_order:
                await _run_pass(applier, _pass(sel, cls))
        finally:
            await applier.store_pending()
        if applier.stop == Stop.daily_quota:
            ledger.defer_open(engine, sel, Reason.daily_quota)
        elif applier.stop == Stop.unreachable:
            ledger.defer_open(engine, sel, Reason.unanswered, Stop.unreachable.value)
    except AuthError as exc:
        # The location's token was refused, or no token could be had: say so on every row
        # that waits for it, so the report can tell support what to do; they stay open.
        if getattr(exc, "refresh_failure", None) in _NO_ANSWER:
            ledger.defer_open(engine, sel, Reason.unanswered, str(exc))
        else:
            ledger.defer_open(engine, sel, Reason.token_refused, str(exc),
                              http_status=getattr(exc, "http_status", None) or 401)
        raise
    applier.result.stopped = applier.stopping


async def _run_pass(applier: _Applier, part: Selection) -> None:
    """One pass of the apply, chunk by chunk of recipients, oldest first."""
    by_recipient = await _on_store(ledger.open_rows, applier.engine, part)
    pairs = list(by_recipient)
    size = applier.opts.chunk_recipients
    for start in range(0, len(pairs), size):
        if applier.stopping:
            break
        chunk = pairs[start:start + size]
        await applier.run_chunk(part, [i for p in chunk for i in by_recipient[p]])
    await applier.store_pending()  # the last chunk's outcomes, before the next pass reads


_TAG_KINDS = (WriteKind.untag, WriteKind.tag)


def _pass(sel: Selection, cls: WriteClass) -> Selection:
    """The part of a selection one pass of the apply writes."""
    if cls == WriteClass.tags:
        return replace(sel, kinds=_TAG_KINDS)
    responses = cls == WriteClass.response_notes
    codes = [c.value for c in EventCode if (c in RESPONSE_CODES) == responses]
    return replace(sel, kinds=(WriteKind.note,), codes=codes)
