"""Apply one location's ledger rows to HighLevel: resolve, settle, tag, note, record.

Per contact: one call removing retrigger tags, one call adding every new tag, then its notes
one by one. Before the first note this store sends to a contact, and whenever a note's fate is
`unknown`, the contact's notes are read and every planned note whose marker is already there is
done: a note is never sent twice, whichever store (or crash) sent it first. A note's row is
marked `unknown` (and committed) *before* its POST. A `done` row is never selected again.
The ledger's statements live in `store.ledger`; this module is the procedure.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy.engine import Engine

from mailsync.clients.auth import AuthError, RefreshFailure
from mailsync.clients.highlevel import HighLevelClient
from mailsync.clients.http import Outcome
from mailsync.codes import RESPONSE_CODES, EventCode, WriteClass, tag_key
from mailsync.store import ledger
from mailsync.store.leases import DEFAULT_TTL, HeldLease, hold_lease
from mailsync.store.ledger import MAX_AUTO_ATTEMPTS, SYNC_STATUSES, RowOutcome, Selection
from mailsync.store.models import WriteIntent, WriteKind, WriteStatus
from mailsync.store.reasons import Reason
from mailsync.sync import failpoints
from mailsync.sync.notes import already_there
from mailsync.sync.resolve import Resolved, forget_contact, load_recipients, resolve


class Stop(StrEnum):
    """Why an apply stopped before every selected row was tried."""

    lease_held_elsewhere = "another worker holds this location's lease"
    lease_lost = "lost the location's lease to another worker"
    daily_quota = "HighLevel's daily request budget for the location is nearly spent"


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
    concurrency: int = 8
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


Progress = Callable[[str, int], None]
_NO_ANSWER = (RefreshFailure.unreachable, RefreshFailure.failed)
"""OAuth refresh failures that say nothing about the token: the token endpoint did not answer."""
_STATUS_OF = {"ok": WriteStatus.done, "rejected": WriteStatus.rejected,
              "failed": WriteStatus.failed, "unknown": WriteStatus.unknown,
              "deferred": WriteStatus.pending}


def row_outcomes(rows: Sequence[WriteIntent], outcome: Outcome) -> list[RowOutcome]:
    """What a call's outcome means for each of its rows, with the reason typed."""
    status = _STATUS_OF[outcome.status]
    reason: Reason | None = None
    clear = False
    if status == WriteStatus.rejected and outcome.contact_gone:
        # The contact is gone: resolve the recipient again next run (it may be re-created).
        status, reason, clear = WriteStatus.pending, Reason.contact_gone, True
    elif status == WriteStatus.rejected:
        reason = Reason.token_refused if outcome.http_status in (401, 403) else Reason.refused
    elif status == WriteStatus.failed:
        reason = Reason.unanswered
    elif status == WriteStatus.unknown:
        reason = Reason.sent_unanswered
    done = status == WriteStatus.done
    return [RowOutcome(r.id, status, reason, None if done else outcome.reason,
                       outcome.http_status, outcome.remote_id if done else None, clear)
            for r in rows if r.id is not None]


class _Applier:
    def __init__(self, engine: Engine, hl: HighLevelClient, location_id: str,
                 opts: ApplyOptions, progress: Progress | None) -> None:
        self.engine, self.hl, self.location_id = engine, hl, location_id
        self.opts, self.progress = opts, progress
        self.selection = opts.selection(location_id)
        self.result = ApplyResult(location_id)
        self.stop: Stop | None = None
        self.lease: HeldLease | None = None
        self.sem = asyncio.Semaphore(opts.concurrency)
        self.settled: set[str] = set()

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

    def _record(self, c: _Contact, rows: Sequence[WriteIntent], outcome: Outcome,
                into: list[RowOutcome]) -> None:
        """Queue a call's outcome for its rows on `into`, which `ledger.store` writes; a call
        not sent for the daily quota is stored at once."""
        self.result.calls += 1
        found = row_outcomes(rows, outcome)
        if outcome.contact_gone:
            c.gone = outcome.reason
        if outcome.status == "deferred":
            ledger.mark(self.engine, [r.id for r in rows], WriteStatus.pending,
                        reason=Reason.daily_quota, detail=outcome.reason)
            self.stop = Stop.daily_quota
        else:
            into.extend(found)
        for o in found:
            self._done(o.status)

    async def run_chunk(self, sel: Selection, pairs: list[tuple[str, str]]) -> None:
        rows = ledger.rows_of(self.engine, sel, pairs)
        if self.opts.reresolve:
            for r in rows:
                if r.status == WriteStatus.rejected:
                    r.contact_id = None
        await self._resolve([r for r in rows if r.contact_id is None])
        by_contact: dict[str, list[WriteIntent]] = defaultdict(list)
        for r in rows:
            if r.contact_id is not None:
                by_contact[r.contact_id].append(r)
        self.settled = ledger.settled_contacts(self.engine, self.location_id, by_contact)
        await _all_or_first_error(self._contact(c, rs) for c, rs in by_contact.items())

    async def _resolve(self, rows: list[WriteIntent]) -> None:
        if not rows:
            return
        pairs: dict[tuple[str, str], list[WriteIntent]] = defaultdict(list)
        for r in rows:
            pairs[(r.drop_id, r.recipient_key)].append(r)
        who = load_recipients(self.engine, set(pairs))
        linked: list[tuple[int, str]] = []

        async def one(pair: tuple[str, str], its_rows: list[WriteIntent]) -> None:
            ids = [r.id for r in its_rows if r.id is not None]
            if pair not in who:
                ledger.mark(self.engine, ids, WriteStatus.rejected, reason=Reason.event_gone)
                self._done(WriteStatus.rejected, len(ids))
                return
            async with self.sem:
                if self.stopping:
                    return
                res = await resolve(self.engine, self.hl, self.location_id, who[pair],
                                    reresolve=self.opts.reresolve,
                                    create_missing=pair[0] in self.opts.create_missing)
            failpoints.hit("resolved")
            if res.contact_id:
                linked.extend((i, res.contact_id) for i in ids)
                for r in its_rows:
                    r.contact_id, r.status = res.contact_id, WriteStatus.pending
                return
            final = res.status == Resolved.rejected
            status = WriteStatus.rejected if final else WriteStatus.pending
            ledger.mark(self.engine, ids, status, reason=res.reason, detail=res.detail,
                        http_status=res.http_status, attempt=final)
            self._done(status, len(ids))

        try:
            await _all_or_first_error(one(p, rs) for p, rs in pairs.items())
        finally:
            # The links found, stored together (a crash loses only cached work: the links
            # themselves are in `contact_links`).
            ledger.link_rows(self.engine, linked)

    async def _contact(self, contact_id: str, rows: list[WriteIntent]) -> None:
        async with self.sem:
            if self.stopping:
                return
            c = _Contact(contact_id, rows)
            notes = sorted((r for r in rows if r.kind == WriteKind.note), key=lambda r: r.id or 0)
            if notes and (contact_id not in self.settled
                          or any(n.status == WriteStatus.unknown for n in notes)):
                notes = await self._settle(c, notes)
            try:
                for kind, call in ((WriteKind.untag, self.hl.remove_tags),
                                   (WriteKind.tag, self.hl.add_tags)):
                    batch = [r for r in rows if r.kind == kind]
                    if batch and not self.stopping and c.gone is None:
                        await self._tags(c, batch, call, check=kind == WriteKind.tag)
            except BaseException:
                ledger.store(self.engine, outcomes=c.later)
                raise
            if c.gone is not None:
                self._forget(c, rows, c.later)
                notes = []
            await self._notes(c, notes)

    def _forget(self, c: _Contact, rows: Iterable[WriteIntent], into: list[RowOutcome]) -> None:
        """HighLevel no longer knows the contact: its open rows are resolved again next run."""
        forget_contact(self.engine, self.location_id, {r.recipient_key for r in c.rows}, c.id)
        told = {o.row_id for o in into}
        into.extend(RowOutcome(r.id, WriteStatus.pending, Reason.contact_gone, c.gone,
                               clear_contact=True)
                    for r in rows if r.id is not None and r.id not in told)

    async def _settle(self, c: _Contact, notes: list[WriteIntent]) -> list[WriteIntent]:
        """Read the contact's notes; every planned note whose marker is there is done.
        Returns the notes still to send: none of the doubtful ones when the read failed."""
        first = c.id not in self.settled
        listing = await self.hl.list_notes(c.id)
        self.result.calls += 1
        self.result.settle_reads += first
        if listing.status != "ok":
            if listing.contact_gone:
                c.gone = listing.reason
            # Cannot tell which notes landed. Before this store's first note to the contact
            # every note is doubtful; after it, only the `unknown` ones.
            return [] if first else [n for n in notes if n.status != WriteStatus.unknown]
        still: list[WriteIntent] = []
        for note in notes:
            remote_id = already_there(listing.data, note.marker or "")
            if remote_id is None:
                still.append(note)
                continue
            ledger.mark(self.engine, [note.id], WriteStatus.done, remote_id=remote_id)
            self._done(WriteStatus.done)
        ledger.mark_settled(self.engine, self.location_id, c.id)
        self.settled.add(c.id)
        return still

    async def _tags(self, c: _Contact, batch: list[WriteIntent], call: Any,
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
            c.later.extend(RowOutcome(r.id, WriteStatus.failed, Reason.tag_missing,
                                      http_status=outcome.http_status)
                           for r in missing if r.id is not None)
            self._done(WriteStatus.failed, len(missing))
            batch = [r for r in batch if r not in missing]
        self._record(c, batch, outcome, c.later)

    async def _notes(self, c: _Contact, notes: list[WriteIntent]) -> None:
        """POST a contact's notes one by one, all marked `unknown` first, in the commit that
        also stores the contact's earlier outcomes.

        A crash from then on leaves `unknown` rows, which the next run settles by their
        markers, so a note is never sent twice. The notes' outcomes are stored together once
        the contact is done; notes never sent (a stop, an error) get their status back,
        unless the lease was lost and another worker may already be settling them.
        """
        if not notes or self.stopping:
            ledger.store(self.engine, outcomes=c.later)
            return
        marked_at = ledger.store(self.engine, outcomes=c.later, sending=[n.id for n in notes])
        outcomes: list[RowOutcome] = []
        sent: set[int | None] = set()
        try:
            for note in notes:
                if self.stopping or c.gone is not None:
                    break
                failpoints.hit("before-note-post")
                sent.add(note.id)
                outcome = await self.hl.create_note(c.id, note.body or "")
                failpoints.hit("after-note-post")
                self._record(c, [note], outcome, outcomes)
        finally:
            unsent = [n for n in notes if n.id not in sent]
            if c.gone is not None:
                self._forget(c, unsent, outcomes)
                unsent = []
            lost = self.lease is not None and self.lease.lost
            ledger.store(self.engine, outcomes=outcomes, marked_at=marked_at,
                         unsent=[] if lost else unsent)
            failpoints.hit("note-recorded")


@dataclass
class _Contact:
    """One contact's rows while they are applied, and what its calls said so far."""

    id: str
    rows: list[WriteIntent]
    later: list[RowOutcome] = field(default_factory=list)
    """Outcomes queued for the commit that marks the contact's notes as being sent."""
    gone: str | None = None
    """HighLevel's words when it said the contact does not exist."""


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
        for cls in opts.write_order:
            part = _pass(sel, cls)
            pairs = ledger.open_recipients(engine, part)
            for start in range(0, len(pairs), opts.chunk_recipients):
                if applier.stopping:
                    break
                await applier.run_chunk(part, pairs[start:start + opts.chunk_recipients])
        if applier.stop == Stop.daily_quota:
            ledger.defer_open(engine, sel, Reason.daily_quota)
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


_TAG_KINDS = (WriteKind.untag, WriteKind.tag)


def _pass(sel: Selection, cls: WriteClass) -> Selection:
    """The part of a selection one pass of the apply writes."""
    if cls == WriteClass.tags:
        return replace(sel, kinds=_TAG_KINDS)
    responses = cls == WriteClass.response_notes
    codes = [c.value for c in EventCode if (c in RESPONSE_CODES) == responses]
    return replace(sel, kinds=(WriteKind.note,), codes=codes)
