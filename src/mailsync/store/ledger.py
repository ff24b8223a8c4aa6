"""Every statement over the write ledger: which rows are open, marking them, storing outcomes.

The apply (sync/apply.py) reads as the per-contact procedure and calls these; the CLI, the
Prefect tasks and the report count and select rows through the same `Selection`, so "which
rows will be applied" is defined once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Executable, Select, Update, bindparam, delete, func, select, update
from sqlalchemy.engine import Connection, Engine

from mailsync.store.models import (
    ContactLink,
    SettledContact,
    WriteIntent,
    WriteKind,
    WriteStatus,
    utcnow,
)
from mailsync.store.ops import dialect_insert, execute_many, rows_where_in
from mailsync.store.reasons import Reason

SYNC_STATUSES = (WriteStatus.pending, WriteStatus.unknown, WriteStatus.failed)
"""What a scheduled run picks up; `rejected` waits for a fix and a replay."""
REPLAY_STATUSES = (WriteStatus.pending, WriteStatus.rejected, WriteStatus.failed,
                   WriteStatus.unknown)
"""What a replay may re-send: everything not done."""
MAX_AUTO_ATTEMPTS = 8
"""A `failed` row is retried by scheduled runs until it has been tried this often."""

_WRITES = WriteIntent.__table__  # type: ignore[attr-defined]
_C = _WRITES.c
_NOW = bindparam("now", type_=_C.updated_at.type)


@dataclass(frozen=True)
class Selection:
    """Which ledger rows of a location an apply looks at (sync and replay differ here)."""

    location_id: str
    statuses: Sequence[WriteStatus] = SYNC_STATUSES
    drop_ids: Sequence[str] | None = None
    since: datetime | None = None
    max_failed_attempts: int | None = MAX_AUTO_ATTEMPTS
    """`failed` rows tried this often are left for a replay; None: no cap (a replay)."""
    kinds: Sequence[WriteKind] | None = None
    codes: Sequence[str] | None = None
    """Only writes of these kinds and event codes (None: all): one pass of an apply."""

    def where(self, q: Any) -> Any:
        """`q` narrowed to the selected rows."""
        q = q.where(_C.location_id == self.location_id,
                    _C.status.in_([WriteStatus(s) for s in self.statuses]))
        if self.kinds is not None:
            q = q.where(_C.kind.in_([WriteKind(k) for k in self.kinds]))
        if self.codes is not None:
            q = q.where(_C.code.in_(list(self.codes)))
        if self.max_failed_attempts is not None and WriteStatus.failed in self.statuses:
            q = q.where((_C.status != WriteStatus.failed)
                        | (_C.attempts < self.max_failed_attempts))
        if self.drop_ids:
            q = q.where(_C.drop_id.in_(list(self.drop_ids)))
        if self.since is not None:
            q = q.where(_C.created_at >= self.since)
        return q

    def admits(self, status: str, attempts: int) -> bool:
        """Whether a row of this location, kind, code and campaign that `where` selected
        still is, at this status and attempt count: the only selected values a row changes."""
        if status not in self.statuses:
            return False
        return not (self.max_failed_attempts is not None and status == WriteStatus.failed
                    and attempts >= self.max_failed_attempts)


def count_open(engine: Engine, sel: Selection) -> int:
    """How many rows an apply with this selection will look at."""
    with engine.connect() as conn:
        return int(conn.execute(sel.where(select(func.count()).select_from(_WRITES))).scalar())


def open_rows(engine: Engine, sel: Selection) -> dict[tuple[str, str], list[int]]:
    """The ids of the selected rows by recipient, (drop_id, recipient_key), recipients in
    the order of their oldest row.

    One read of the selection, after which an apply reads each chunk's rows by id: read by
    recipient instead, every chunk went through all of the location's open rows (no index
    leads from a recipient to its ledger rows), a cost growing with the square of its size.
    """
    q: Select[Any] = sel.where(select(_C.id, _C.drop_id, _C.recipient_key)).order_by(_C.id)
    by_recipient: dict[tuple[str, str], list[int]] = {}
    with engine.connect() as conn:
        for row_id, drop_id, recipient_key in conn.execute(q):
            by_recipient.setdefault((drop_id, recipient_key), []).append(row_id)
    return by_recipient


@dataclass(slots=True)
class LedgerRow:
    """A ledger row as the apply reads it: plain data (the apply edits `contact_id` and
    `status` as it resolves contacts); no ORM identity map, events or instrumentation."""

    id: int
    kind: str
    drop_id: str
    recipient_key: str
    code: str
    contact_id: str | None
    tag: str | None
    body: str | None
    marker: str | None
    status: str
    reason_code: str | None
    reason: str | None


_ROW_NAMES = ("id", "kind", "drop_id", "recipient_key", "code", "contact_id", "tag", "body",
              "marker", "status", "reason_code", "reason", "attempts")
"""A `LedgerRow`'s columns, then the attempts `Selection.admits` asks for."""


def rows_of(engine: Engine, sel: Selection, ids: Sequence[int]) -> list[LedgerRow]:
    """The rows with these ids (from `open_rows(sel)`) that the selection still selects, in
    ledger order. Read by id as driver SQL (`rows_where_in`): through SQLAlchemy, handling
    each row cost half as much again as reading it."""
    with engine.connect() as conn:
        found = rows_where_in(conn, _WRITES, _ROW_NAMES, "id", ids)
    rows: list[LedgerRow] = []
    for *fields, attempts in sorted(found):
        row = LedgerRow(*fields)
        if sel.admits(row.status, attempts):
            rows.append(row)
    return rows


@dataclass(slots=True)
class RowOutcome:
    """What one attempt did to one row, queued in a `Batch`.

    Not frozen: a frozen dataclass sets each field through `object.__setattr__`, five times
    the cost of building it, and the apply builds one per row it writes."""

    row_id: int
    status: WriteStatus
    reason: Reason | None = None
    detail: str | None = None
    http_status: int | None = None
    remote_id: str | None = None
    clear_contact: bool = False
    """Forget the row's contact (HighLevel no longer knows it): the next run resolves again."""
    attempt: bool = True
    """Count an attempt (False: the row was not sent, e.g. its lookup got no answer)."""

    def params(self, now: datetime) -> dict[str, Any]:
        """The bind parameters of `_outcome_statement` for this outcome."""
        return {"row_id": self.row_id, "now": now, "v_status": self.status,
                "v_code": self.reason, "v_reason": self.detail, "v_http": self.http_status,
                "v_remote": self.remote_id}


@functools.cache
def _outcome_statement(clear_contact: bool, attempt: bool, link: bool = False) -> Update:
    """The UPDATE storing one outcome per parameter set (see `RowOutcome.params`); with
    `link`, it also points the row at its contact (`v_contact`)."""
    values: dict[str, Any] = {
        "status": bindparam("v_status", type_=_C.status.type),
        "reason_code": bindparam("v_code", type_=_C.reason_code.type),
        "reason": bindparam("v_reason", type_=_C.reason.type),
        "updated_at": _NOW,
        "last_http_status": func.coalesce(bindparam("v_http", type_=_C.last_http_status.type),
                                          _C.last_http_status),
        "remote_id": func.coalesce(bindparam("v_remote", type_=_C.remote_id.type),
                                   _C.remote_id),
    }
    if attempt:
        values.update(attempts=_C.attempts + 1, last_attempt_at=_NOW,
                      first_attempt_at=func.coalesce(_C.first_attempt_at, _NOW))
    if clear_contact:
        # A contact HighLevel no longer knows: its rows are resolved again by the next run.
        values["contact_id"] = None
    elif link:
        values["contact_id"] = bindparam("v_contact", type_=_C.contact_id.type)
    return update(_WRITES).where(_C.id == bindparam("row_id")).values(values)


@functools.cache
def _mark_statement(columns: frozenset[str], attempt: bool) -> Update:
    """An UPDATE of `columns` on a list of row ids, built once per shape: building and hashing
    a statement per call cost more than running it (bench/RESULTS.md, section 3)."""
    values: dict[str, Any] = {c: bindparam(f"v_{c}", type_=_C[c].type) for c in columns}
    values["updated_at"] = _NOW
    if attempt:
        values["attempts"] = _C.attempts + 1
        values["last_attempt_at"] = _NOW
        values["first_attempt_at"] = func.coalesce(_C.first_attempt_at, _NOW)
    return update(_WRITES).where(_C.id.in_(bindparam("ids", expanding=True))).values(values)


def mark(engine: Engine, ids: Iterable[int | None], status: WriteStatus, *,
         reason: Reason | None = None, detail: str | None = None,
         http_status: int | None = None, remote_id: str | None = None,
         contact_id: str | None = None, attempt: bool = False) -> datetime:
    """Set `status` and its reason on the rows `ids` now; returns the `updated_at` set."""
    ids = [i for i in ids if i is not None]
    now = utcnow()
    if not ids:
        return now
    values: dict[str, Any] = {"status": status, "reason_code": reason, "reason": detail}
    if http_status is not None:
        values["last_http_status"] = http_status
    if remote_id is not None:
        values["remote_id"] = remote_id
    if contact_id is not None:
        values["contact_id"] = contact_id
    stmt = _mark_statement(frozenset(values), attempt)
    with engine.begin() as conn:
        conn.execute(stmt, {"ids": ids, "now": now, **{f"v_{k}": v for k, v in values.items()}})
    return now


_UNSENT = update(_WRITES).where(
    _C.id == bindparam("row_id"), _C.status == WriteStatus.unknown,
    # Only if nobody touched the row since we marked it (another worker settling it).
    _C.updated_at == bindparam("marked_at", type_=_C.updated_at.type),
).values(status=bindparam("v_status", type_=_C.status.type),
         reason_code=bindparam("v_code", type_=_C.reason_code.type),
         reason=bindparam("v_reason", type_=_C.reason.type), updated_at=_NOW)

_LINKED = update(_WRITES).where(_C.id == bindparam("row_id")).values(
    contact_id=bindparam("v_contact", type_=_C.contact_id.type),
    status=WriteStatus.pending, reason_code=None, reason=None, updated_at=_NOW)

_LINKED_SENDING = update(_WRITES).where(_C.id == bindparam("row_id")).values(
    contact_id=bindparam("v_contact", type_=_C.contact_id.type),
    status=WriteStatus.unknown, reason_code=Reason.sending, reason=None, updated_at=_NOW)
"""`_LINKED`, then marking the row as being sent, in one UPDATE: what a chunk's first commit
does to each newly resolved note (rewriting a ledger row and its status indexes twice cost
a tenth of the apply's own CPU, bench/RESULTS.md section 3)."""

_SETTLED = SettledContact.__table__  # type: ignore[attr-defined]
_LINKS = ContactLink.__table__  # type: ignore[attr-defined]


@functools.cache
def _settled_insert(dialect: str) -> Executable:
    return dialect_insert(dialect)(_SETTLED).on_conflict_do_nothing()


@functools.cache
def _link_upsert(dialect: str) -> Executable:
    ins = dialect_insert(dialect)(_LINKS)
    return ins.on_conflict_do_update(
        index_elements=[_LINKS.c.location_id, _LINKS.c.recipient_key],
        set_={"contact_id": ins.excluded.contact_id, "matched_by": ins.excluded.matched_by,
              "updated_at": ins.excluded.updated_at})


@dataclass
class Batch:
    """Ledger writes an apply queues, stored together in one transaction by `write`.

    Outcomes may wait (a crash that loses them leaves rows `pending`, `failed` or `unknown`,
    which the next run retries or settles by marker); marking notes `unknown` may not: `write`
    returns only once they are committed, and their POSTs come after.
    """

    location_id: str
    links: list[tuple[int, str]] = field(default_factory=list)
    """(row id, contact id): rows pointed at their resolved contact (pending again); a row
    with an outcome in the same batch gets both in one UPDATE."""
    found: list[tuple[str, str | None, str]] = field(default_factory=list)
    """(recipient key, contact id or None, how matched): `contact_links` to store."""
    outcomes: list[RowOutcome] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)
    """Contacts whose notes were read; stored with the outcomes of the notes found there."""
    sending: list[int] = field(default_factory=list)
    """Note rows to mark `unknown` (being sent)."""
    unsent: list[LedgerRow] = field(default_factory=list)
    """Rows marked `unknown` at `marked_at` and never sent: their own status back."""
    marked_at: datetime | None = None

    def __bool__(self) -> bool:
        return bool(self.links or self.found or self.outcomes or self.settled or self.sending
                    or (self.unsent and self.marked_at is not None))


def write(engine: Engine, batch: Batch) -> datetime:
    """Store everything `batch` holds in one transaction and empty it; returns the time it
    stamped (the `marked_at` of the rows it marked as being sent)."""
    now = utcnow()
    if not batch:
        return now
    with engine.begin() as conn:
        _write(conn, batch, now)
    batch.links, batch.found, batch.outcomes, batch.settled = [], [], [], []
    batch.sending, batch.unsent = [], []
    return now


def _linked_sending(batch: Batch, told: set[int]) -> set[int]:
    """Rows the batch both links and marks as being sent, with no outcome of their own in
    it (`told`): one UPDATE does both (`_LINKED_SENDING`)."""
    if not (batch.links and batch.sending):
        return set()
    return {i for i in batch.sending if i not in told} & {i for i, _ in batch.links}


def _write(conn: Connection, batch: Batch, now: datetime) -> None:
    # One executemany per statement, compiled once per process (`execute_many`).
    dialect = conn.dialect.name
    told = {o.row_id for o in batch.outcomes}
    sending = _linked_sending(batch, told)
    for statement, links in (
            (_LINKED, [lk for lk in batch.links if lk[0] not in sending and lk[0] not in told]),
            (_LINKED_SENDING, [lk for lk in batch.links if lk[0] in sending])):
        if links:
            execute_many(conn, statement, [{"row_id": i, "v_contact": c, "now": now}
                                           for i, c in links])
    if batch.found:
        execute_many(conn, _link_upsert(dialect), [
            {"location_id": batch.location_id, "recipient_key": key, "contact_id": contact,
             "matched_by": how, "updated_at": now} for key, contact, how in batch.found])
    _write_outcomes(conn, batch, now)
    if batch.settled:
        execute_many(conn, _settled_insert(dialect), [
            {"location_id": batch.location_id, "contact_id": c, "settled_at": now}
            for c in dict.fromkeys(batch.settled)])
    if unlinked := [i for i in batch.sending if i not in sending]:
        conn.execute(_mark_statement(frozenset({"status", "reason_code", "reason"}), False),
                     {"ids": unlinked, "now": now, "v_status": WriteStatus.unknown,
                      "v_reason_code": Reason.sending, "v_reason": None})
    if batch.unsent and batch.marked_at is not None:
        execute_many(conn, _UNSENT, [{"row_id": r.id, "marked_at": batch.marked_at, "now": now,
                                      "v_status": r.status, "v_code": r.reason_code,
                                      "v_reason": r.reason} for r in batch.unsent])


def _write_outcomes(conn: Connection, batch: Batch, now: datetime) -> None:
    """Each outcome, with the row's link when the batch has one: what linking and then
    storing the outcome leave, in one UPDATE (an outcome that forgets the contact wins)."""
    contact = dict(batch.links)
    groups: dict[tuple[bool, bool, bool], list[dict[str, Any]]] = {}
    for o in batch.outcomes:
        params = o.params(now)
        linked = not o.clear_contact and o.row_id in contact
        if linked:
            params["v_contact"] = contact[o.row_id]
        groups.setdefault((o.clear_contact, o.attempt, linked), []).append(params)
    for (clear, attempt, linked), params in groups.items():
        execute_many(conn, _outcome_statement(clear, attempt, linked), params)


def link_rows(engine: Engine, links: Sequence[tuple[int, str]]) -> None:
    """Point rows at their resolved contact (pending again, if a replay re-opened them)."""
    if links:
        write(engine, Batch("", links=list(links)))


def save_links(engine: Engine, location_id: str,
               found: Sequence[tuple[str, str | None, str]]) -> None:
    """Store recipients' contact links: (recipient key, contact id or None, how matched)."""
    if found:
        write(engine, Batch(location_id, found=list(found)))


def defer_open(engine: Engine, sel: Selection, reason: Reason, detail: str | None = None,
               http_status: int | None = None) -> None:
    """Leave the selection's pending rows pending, saying why they wait."""
    pending = Selection(sel.location_id, (WriteStatus.pending,), sel.drop_ids, sel.since)
    with engine.connect() as conn:
        ids = list(conn.execute(pending.where(select(_C.id))).scalars())
    mark(engine, ids, WriteStatus.pending, reason=reason, detail=detail,
         http_status=http_status)


# -- contacts whose notes this store has read ------------------------------------------------


def settled_contacts(engine: Engine, location_id: str, contact_ids: Iterable[str]) -> set[str]:
    """Of these contacts, the ones whose notes this store has already read."""
    ids = list(set(contact_ids))
    if not ids:
        return set()
    q = select(_SETTLED.c.contact_id).where(_SETTLED.c.location_id == location_id,
                                            _SETTLED.c.contact_id.in_(ids))
    with engine.connect() as conn:
        return set(conn.execute(q).scalars())


def mark_settled(engine: Engine, location_id: str, contact_id: str) -> None:
    """Record that this store has read the contact's notes (from now on it knows them)."""
    write(engine, Batch(location_id, settled=[contact_id]))


def forget_settled(engine: Engine, location_id: str | None = None,
                   drop_ids: Sequence[str] | None = None) -> int:
    """Forget which contacts were read (all, a location's, or those of some campaigns), so the
    next apply reads each one's notes again: for a store restored from an older backup."""
    q = delete(_SETTLED)
    if location_id is not None:
        q = q.where(_SETTLED.c.location_id == location_id)
    if drop_ids:
        touched = select(_C.contact_id).where(_C.drop_id.in_(list(drop_ids)),
                                              _C.contact_id.is_not(None))
        q = q.where(_SETTLED.c.contact_id.in_(touched))
    with engine.begin() as conn:
        return int(conn.execute(q).rowcount or 0)
