"""Apply one location's ledger rows to HighLevel: resolve, settle, tag, note, record.

Per contact: one call removing retrigger tags, one call adding every new tag, then its notes
one by one. A note's row is marked `unknown` (and committed) *before* its POST, so a crash or a
cut connection after the POST leaves a row that is settled by reading the contact's notes for
its marker; it is never blindly re-sent. A `done` row is never selected again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Update, bindparam, func, tuple_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailsync.clients.auth import AuthError
from mailsync.clients.highlevel import HighLevelClient
from mailsync.codes import tag_key
from mailsync.store.leases import DEFAULT_TTL, HeldLease, hold_lease
from mailsync.store.models import WriteIntent, WriteKind, WriteStatus, utcnow
from mailsync.sync import failpoints
from mailsync.sync.notes import has_marker
from mailsync.sync.resolve import forget_link, load_recipients, resolve

log = logging.getLogger("mailsync.apply")

SYNC_STATUSES = (WriteStatus.pending, WriteStatus.unknown, WriteStatus.failed)
"""What a scheduled run picks up; `rejected` waits for a fix and a replay."""
MAX_AUTO_ATTEMPTS = 8
"""A `failed` row is retried by later runs until it has been tried this often."""
LEASE_HELD_ELSEWHERE = "another worker holds this location's lease"
DAILY_QUOTA_REASON = "daily quota: HighLevel's daily request budget is nearly spent"
_STATUS_OF = {"ok": WriteStatus.done, "rejected": WriteStatus.rejected,
              "failed": WriteStatus.failed, "unknown": WriteStatus.unknown,
              "deferred": WriteStatus.pending}


@dataclass
class ApplyResult:
    """What one location's apply did."""

    location_id: str
    outcomes: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    stopped: str | None = None
    """Why the apply stopped early (lease lost or held elsewhere, daily quota)."""

    def count(self, status: str, n: int = 1) -> None:
        """Add n rows that ended with this status."""
        self.outcomes[status] = self.outcomes.get(status, 0) + n


@dataclass
class ApplyOptions:
    """Which rows to apply and how (sync and replay differ only here)."""

    statuses: Sequence[str] = SYNC_STATUSES
    drop_ids: Sequence[str] | None = None
    since: datetime | None = None
    reresolve: bool = False
    create_missing: frozenset[str] = frozenset()
    """Drop ids whose recipients without a contact get one created (upsert, no tags)."""
    concurrency: int = 8
    chunk_recipients: int = 200
    holder: str | None = None
    lease_ttl: timedelta = DEFAULT_TTL


Progress = Callable[[str, int], None]
_WRITES = WriteIntent.__table__  # type: ignore[attr-defined]
_NOW = bindparam("now", type_=_WRITES.c.updated_at.type)


@functools.cache
def _mark_statement(columns: frozenset[str], attempt: bool) -> Update:
    """The UPDATE `_mark` runs, built once per shape: building and hashing a statement per
    call cost more than running it (bench/RESULTS.md, section 3)."""
    values: dict[str, Any] = {c: bindparam(f"v_{c}", type_=_WRITES.c[c].type) for c in columns}
    values["updated_at"] = _NOW
    if attempt:
        values["attempts"] = _WRITES.c.attempts + 1
        values["last_attempt_at"] = _NOW
        values["first_attempt_at"] = func.coalesce(_WRITES.c.first_attempt_at, _NOW)
    return update(_WRITES).where(_WRITES.c.id.in_(bindparam("ids", expanding=True))).values(
        values)


def _mark(engine: Engine, ids: Iterable[int], status: str, *, http_status: int | None = None,
          reason: str | None = None, remote_id: str | None = None, attempt: bool = False,
          contact_id: str | None = None) -> datetime:
    """Set `status` (and the given details) on the rows `ids`; returns the `updated_at` set."""
    ids = list(ids)
    now = utcnow()
    if not ids:
        return now
    values: dict[str, Any] = {"status": status, "reason": reason}
    if http_status is not None:
        values["last_http_status"] = http_status
    if remote_id is not None:
        values["remote_id"] = remote_id
    if contact_id is not None:
        values["contact_id"] = contact_id
    stmt = _mark_statement(frozenset(values), attempt)
    # A plain connection, not an ORM session: nothing here needs the session's bookkeeping.
    with engine.begin() as conn:
        params = {f"v_{k}": v for k, v in values.items()}
        conn.execute(stmt, {"ids": ids, "now": now, **params})
    return now


_OUTCOME = update(_WRITES).where(_WRITES.c.id == bindparam("row_id")).values(
    status=bindparam("v_status", type_=_WRITES.c.status.type),
    reason=bindparam("v_reason", type_=_WRITES.c.reason.type),
    updated_at=_NOW,
    last_http_status=func.coalesce(bindparam("v_http", type_=_WRITES.c.last_http_status.type),
                                   _WRITES.c.last_http_status),
    remote_id=func.coalesce(bindparam("v_remote", type_=_WRITES.c.remote_id.type),
                            _WRITES.c.remote_id),
    attempts=_WRITES.c.attempts + 1,
    last_attempt_at=_NOW,
    first_attempt_at=func.coalesce(_WRITES.c.first_attempt_at, _NOW),
)
_UNSENT = update(_WRITES).where(
    _WRITES.c.id == bindparam("row_id"), _WRITES.c.status == WriteStatus.unknown,
    # Only if nobody touched the row since we marked it (another worker settling it).
    _WRITES.c.updated_at == bindparam("marked_at", type_=_WRITES.c.updated_at.type),
).values(status=bindparam("v_status", type_=_WRITES.c.status.type),
         reason=bindparam("v_reason", type_=_WRITES.c.reason.type), updated_at=_NOW)


def _store(engine: Engine, *, outcomes: Sequence[dict[str, Any]] = (),
           unknown: Sequence[int] = (), unsent: Sequence[WriteIntent] = (),
           marked_at: datetime | None = None) -> datetime:
    """In one transaction: store the outcomes `_record` queued, mark the rows `unknown` as
    about to be sent, and give rows marked so at `marked_at` but never sent their status
    back. Returns the time written."""
    now = utcnow()
    with engine.begin() as conn:
        if outcomes:
            conn.execute(_OUTCOME, [{**o, "now": now} for o in outcomes])
        if unknown:
            conn.execute(_mark_statement(frozenset({"status", "reason"}), False), {
                "ids": list(unknown), "now": now, "v_status": WriteStatus.unknown,
                "v_reason": "sent, no answer yet"})
        if unsent and marked_at is not None:
            conn.execute(_UNSENT, [{"row_id": r.id, "marked_at": marked_at, "now": now,
                                    "v_status": r.status, "v_reason": r.reason} for r in unsent])
    return now


_LINKED = update(_WRITES).where(_WRITES.c.id == bindparam("row_id")).values(
    contact_id=bindparam("v_contact", type_=_WRITES.c.contact_id.type),
    status=WriteStatus.pending, reason=None, updated_at=_NOW)


def open_recipients(engine: Engine, location_id: str, opts: ApplyOptions) -> list[tuple[str, str]]:
    """(drop_id, recipient_key) pairs with rows to apply, oldest first."""
    with Session(engine) as s:
        q = _filter(select(WriteIntent.drop_id, WriteIntent.recipient_key), location_id, opts)
        q = q.group_by(WriteIntent.drop_id, WriteIntent.recipient_key).order_by(
            func.min(WriteIntent.id))
        return [(d, r) for d, r in s.exec(q).all()]


def _filter(q: Any, location_id: str, opts: ApplyOptions) -> Any:
    q = q.where(WriteIntent.location_id == location_id,
                col(WriteIntent.status).in_(list(opts.statuses)))
    if WriteStatus.failed in opts.statuses and opts.statuses == SYNC_STATUSES:
        q = q.where((WriteIntent.status != WriteStatus.failed)
                    | (col(WriteIntent.attempts) < MAX_AUTO_ATTEMPTS))
    if opts.drop_ids:
        q = q.where(col(WriteIntent.drop_id).in_(list(opts.drop_ids)))
    if opts.since is not None:
        q = q.where(col(WriteIntent.created_at) >= opts.since)
    return q


class _Applier:
    def __init__(self, engine: Engine, hl: HighLevelClient, location_id: str,
                 opts: ApplyOptions, progress: Progress | None) -> None:
        self.engine, self.hl, self.location_id = engine, hl, location_id
        self.opts, self.progress = opts, progress
        self.result = ApplyResult(location_id)
        self.stop: str | None = None
        self.lease: HeldLease | None = None
        self.sem = asyncio.Semaphore(opts.concurrency)

    @property
    def stopping(self) -> str | None:
        """Why no further write should start now, if anything says so."""
        if self.lease is not None and self.lease.lost:
            return "lost the location's lease to another worker"
        return self.stop

    def _done(self, status: str, n: int = 1) -> None:
        self.result.count(status, n)
        if self.progress:
            self.progress(self.location_id, n)

    def _record(self, rows: Sequence[WriteIntent], outcome: Any,
                later: list[dict[str, Any]]) -> str:
        """Queue a call's outcome for its rows on `later`, which `_store` writes (an attempt
        each); a call not sent for the daily quota is stored at once. Returns the new status."""
        status = _STATUS_OF[outcome.status]
        ids = [r.id for r in rows if r.id is not None]
        if outcome.status == "deferred":
            _mark(self.engine, ids, status, reason=DAILY_QUOTA_REASON)
            self.stop = DAILY_QUOTA_REASON
        else:
            reason = None if status == WriteStatus.done else outcome.reason
            remote_id = outcome.remote_id if status == WriteStatus.done else None
            later += [{"row_id": i, "v_status": status, "v_reason": reason,
                       "v_http": outcome.http_status, "v_remote": remote_id} for i in ids]
        if outcome.status == "rejected" and outcome.http_status == 404:
            # The contact we linked to is gone: forget the link so a replay looks again.
            for key in {r.recipient_key for r in rows}:
                forget_link(self.engine, self.location_id, key)
        self.result.calls += 1
        self._done(status, len(rows))
        return status

    async def run_chunk(self, pairs: list[tuple[str, str]]) -> None:
        with Session(self.engine) as s:
            q = _filter(select(WriteIntent), self.location_id, self.opts).where(
                tuple_(WriteIntent.drop_id, WriteIntent.recipient_key).in_(pairs)
            ).order_by(col(WriteIntent.id))
            rows = list(s.exec(q).all())
        if self.opts.reresolve:
            for r in rows:
                if r.status == WriteStatus.rejected:
                    r.contact_id = None
        await self._resolve([r for r in rows if r.contact_id is None])
        by_contact: dict[str, list[WriteIntent]] = defaultdict(list)
        for r in rows:
            if r.contact_id is not None:
                by_contact[r.contact_id].append(r)
        await _all_or_first_error(self._contact(c, rs) for c, rs in by_contact.items())

    async def _resolve(self, rows: list[WriteIntent]) -> None:
        if not rows:
            return
        pairs: dict[tuple[str, str], list[WriteIntent]] = defaultdict(list)
        for r in rows:
            pairs[(r.drop_id, r.recipient_key)].append(r)
        who = load_recipients(self.engine, set(pairs))
        linked: list[dict[str, Any]] = []

        async def one(pair: tuple[str, str], its_rows: list[WriteIntent]) -> None:
            if pair not in who:
                _mark(self.engine, [r.id for r in its_rows if r.id], WriteStatus.rejected,
                      reason="the event behind this write is no longer stored")
                self._done(WriteStatus.rejected, len(its_rows))
                return
            async with self.sem:
                if self.stopping:
                    return
                res = await resolve(self.engine, self.hl, self.location_id, who[pair],
                                    reresolve=self.opts.reresolve,
                                    create_missing=pair[0] in self.opts.create_missing)
            failpoints.hit("resolved")
            ids = [r.id for r in its_rows if r.id is not None]
            if res.contact_id:
                linked.extend({"row_id": i, "v_contact": res.contact_id} for i in ids)
                for r in its_rows:
                    r.contact_id = res.contact_id
                    if r.status == WriteStatus.rejected:
                        r.status = WriteStatus.pending
            elif res.status == "rejected":
                _mark(self.engine, ids, WriteStatus.rejected, reason=res.reason,
                      http_status=res.http_status, attempt=True)
                self._done(WriteStatus.rejected, len(ids))
            else:  # HighLevel did not answer the lookup: stay pending for the next run
                _mark(self.engine, ids, WriteStatus.pending, reason=res.reason,
                      http_status=res.http_status)
                self._done(WriteStatus.pending, len(ids))

        try:
            await _all_or_first_error(one(p, rs) for p, rs in pairs.items())
        finally:
            # The links found, stored together (a crash loses only cached work: the links
            # themselves are in `contact_links`).
            if linked:
                now = utcnow()
                with self.engine.begin() as conn:
                    conn.execute(_LINKED, [{**x, "now": now} for x in linked])

    async def _contact(self, contact_id: str, rows: list[WriteIntent]) -> None:
        async with self.sem:
            if self.stopping:
                return
            notes = [r for r in rows if r.kind == WriteKind.note]
            if any(r.status == WriteStatus.unknown for r in notes):
                notes = await self._settle(contact_id, notes)
            tagged: list[dict[str, Any]] = []
            try:
                for kind, call in ((WriteKind.untag, self.hl.remove_tags),
                                   (WriteKind.tag, self.hl.add_tags)):
                    batch = [r for r in rows if r.kind == kind]
                    if batch and not self.stopping:
                        await self._tags(contact_id, batch, call, check=kind == WriteKind.tag,
                                         later=tagged)
            except BaseException:
                _store(self.engine, outcomes=tagged)
                raise
            await self._notes(contact_id, sorted(notes, key=lambda r: r.id or 0), tagged)

    async def _notes(self, contact_id: str, notes: list[WriteIntent],
                     tagged: list[dict[str, Any]]) -> None:
        """POST a contact's notes one by one, all marked `unknown` first, in the commit that
        also stores the contact's tag outcomes (`tagged`).

        A crash from then on leaves `unknown` rows, which the next run settles by their
        markers, so a note is never sent twice. The notes' outcomes are stored together once
        the contact is done; notes never sent (a stop, an error) get their status back,
        unless the lease was lost and another worker may already be settling them.
        """
        if not notes or self.stopping:
            _store(self.engine, outcomes=tagged)
            return
        marked_at = _store(self.engine, outcomes=tagged,
                           unknown=[n.id for n in notes if n.id is not None])
        outcomes: list[dict[str, Any]] = []
        sent: set[int | None] = set()
        try:
            for note in notes:
                if self.stopping:
                    break
                failpoints.hit("before-note-post")
                sent.add(note.id)
                outcome = await self.hl.create_note(contact_id, note.body or "")
                failpoints.hit("after-note-post")
                self._record([note], outcome, outcomes)
        finally:
            lost = self.lease is not None and self.lease.lost
            _store(self.engine, outcomes=outcomes, marked_at=marked_at,
                   unsent=[] if lost else [n for n in notes if n.id not in sent])
            failpoints.hit("note-recorded")

    async def _settle(self, contact_id: str, notes: list[WriteIntent]) -> list[WriteIntent]:
        """Find unknown notes on the contact by marker; returns the notes still to send."""
        listing = await self.hl.list_notes(contact_id)
        self.result.calls += 1
        if listing.status != "ok":
            # Cannot tell whether they landed: leave them unknown, send none of them now.
            return [n for n in notes if n.status != WriteStatus.unknown]
        remote = [n for n in (listing.data or []) if isinstance(n, dict)]
        still: list[WriteIntent] = []
        for note in notes:
            if note.status != WriteStatus.unknown:
                still.append(note)
                continue
            found = next((n for n in remote if has_marker(n.get("body"), note.marker or "")), None)
            if found is not None:
                _mark(self.engine, [note.id], WriteStatus.done,  # type: ignore[list-item]
                      remote_id=str(found.get("id") or ""), reason=None)
                self._done(WriteStatus.done)
            else:
                still.append(note)
        return still

    async def _tags(self, contact_id: str, batch: list[WriteIntent], call: Any,
                    check: bool, later: list[dict[str, Any]]) -> None:
        wanted: dict[str, str] = {}
        for r in batch:
            wanted.setdefault(tag_key(r.tag or ""), r.tag or "")
        failpoints.hit("before-tags-post")
        outcome = await call(contact_id, list(wanted.values()))
        failpoints.hit("after-tags-post")
        if check and outcome.status == "ok" and isinstance(outcome.data, list):
            kept = {tag_key(str(t)) for t in outcome.data}
            missing = [r for r in batch if tag_key(r.tag or "") not in kept]
            if missing:
                _mark(self.engine, [r.id for r in missing if r.id], WriteStatus.failed,
                      http_status=outcome.http_status, attempt=True,
                      reason="HighLevel answered but the tag is not on the contact")
                self._done(WriteStatus.failed, len(missing))
                batch = [r for r in batch if r not in missing]
        if outcome.status == "unknown":  # tag writes are idempotent: just send again later
            outcome = outcome.model_copy(update={"status": "failed"})
        self._record(batch, outcome, later)


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
            applier.result.stopped = LEASE_HELD_ELSEWHERE
            return applier.result
        applier.lease = lease
        await _apply_rows(applier)
    return applier.result


async def _apply_rows(applier: _Applier) -> None:
    engine, location_id, opts = applier.engine, applier.location_id, applier.opts
    try:
        pairs = open_recipients(engine, location_id, opts)
        for start in range(0, len(pairs), opts.chunk_recipients):
            if applier.stopping:
                break
            await applier.run_chunk(pairs[start:start + opts.chunk_recipients])
        if applier.stop == DAILY_QUOTA_REASON:
            _defer_rest(engine, location_id, opts, DAILY_QUOTA_REASON)
    except AuthError as exc:
        # The location's token was refused: say so on every row that waits for it, so the
        # report can tell support what to do; they stay open for the run after the fix.
        _defer_rest(engine, location_id, opts, f"token refused: {exc}",
                    http_status=getattr(exc, "http_status", None) or 401)
        raise
    applier.result.stopped = applier.stopping


def _defer_rest(engine: Engine, location_id: str, opts: ApplyOptions, reason: str,
                http_status: int | None = None) -> None:
    """Leave the location's remaining pending rows pending, with the reason why."""
    with Session(engine) as s:
        ids = s.exec(_filter(select(WriteIntent.id), location_id, opts).where(
            WriteIntent.status == WriteStatus.pending)).all()
    _mark(engine, [i for i in ids if i is not None], WriteStatus.pending, reason=reason,
          http_status=http_status)
