"""Every statement over the write ledger: which rows are open, marking them, storing outcomes.

The apply (sync/apply.py) reads as the per-contact procedure and calls these; the CLI, the
Prefect tasks and the report count and select rows through the same `Selection`, so "which
rows will be applied" is defined once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Update, bindparam, delete, func, select, tuple_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailsync.store.models import SettledContact, WriteIntent, WriteKind, WriteStatus, utcnow
from mailsync.store.ops import insert_ignore
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


def count_open(engine: Engine, sel: Selection) -> int:
    """How many rows an apply with this selection will look at."""
    with engine.connect() as conn:
        return int(conn.execute(sel.where(select(func.count()).select_from(_WRITES))).scalar())


def open_recipients(engine: Engine, sel: Selection) -> list[tuple[str, str]]:
    """(drop_id, recipient_key) pairs with selected rows, oldest first."""
    q: Select[Any] = sel.where(select(_C.drop_id, _C.recipient_key))
    q = q.group_by(_C.drop_id, _C.recipient_key).order_by(func.min(_C.id))
    with engine.connect() as conn:
        return [(d, r) for d, r in conn.execute(q)]


def rows_of(engine: Engine, sel: Selection, pairs: Sequence[tuple[str, str]]) -> list[WriteIntent]:
    """The selected rows of these recipients, in ledger order (the apply edits them as it
    resolves contacts, so they are ORM objects, outside any session)."""
    q = sel.where(select(WriteIntent)).where(
        tuple_(_C.drop_id, _C.recipient_key).in_(list(pairs))).order_by(_C.id)
    with Session(engine) as s:
        return list(s.scalars(q).all())


@dataclass(frozen=True)
class RowOutcome:
    """What one attempt did to one row, queued for the contact's commit."""

    row_id: int
    status: WriteStatus
    reason: Reason | None = None
    detail: str | None = None
    http_status: int | None = None
    remote_id: str | None = None
    clear_contact: bool = False
    """Forget the row's contact (HighLevel no longer knows it): the next run resolves again."""

    def params(self, now: datetime) -> dict[str, Any]:
        """The bind parameters of `_OUTCOME` for this outcome."""
        return {"row_id": self.row_id, "now": now, "v_status": self.status,
                "v_code": self.reason, "v_reason": self.detail, "v_http": self.http_status,
                "v_remote": self.remote_id}


_OUTCOME = update(_WRITES).where(_C.id == bindparam("row_id")).values(
    status=bindparam("v_status", type_=_C.status.type),
    reason_code=bindparam("v_code", type_=_C.reason_code.type),
    reason=bindparam("v_reason", type_=_C.reason.type),
    updated_at=_NOW,
    last_http_status=func.coalesce(bindparam("v_http", type_=_C.last_http_status.type),
                                   _C.last_http_status),
    remote_id=func.coalesce(bindparam("v_remote", type_=_C.remote_id.type), _C.remote_id),
    attempts=_C.attempts + 1,
    last_attempt_at=_NOW,
    first_attempt_at=func.coalesce(_C.first_attempt_at, _NOW),
)


# A contact HighLevel no longer knows: its rows are resolved again by the next run.
_OUTCOME_CLEARING = _OUTCOME.values(contact_id=None)


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


def store(engine: Engine, *, outcomes: Sequence[RowOutcome] = (),
          sending: Sequence[int | None] = (), unsent: Sequence[WriteIntent] = (),
          marked_at: datetime | None = None) -> datetime:
    """In one transaction: store queued outcomes, mark rows as being sent (`unknown`), and
    give rows marked so at `marked_at` but never sent their status back. Returns its time."""
    now = utcnow()
    with engine.begin() as conn:
        for clear in (False, True):
            batch = [o.params(now) for o in outcomes if o.clear_contact is clear]
            if batch:
                conn.execute(_OUTCOME_CLEARING if clear else _OUTCOME, batch)
        ids = [i for i in sending if i is not None]
        if ids:
            conn.execute(_mark_statement(frozenset({"status", "reason_code", "reason"}), False),
                         {"ids": ids, "now": now, "v_status": WriteStatus.unknown,
                          "v_reason_code": Reason.sending, "v_reason": None})
        if unsent and marked_at is not None:
            conn.execute(_UNSENT, [{"row_id": r.id, "marked_at": marked_at, "now": now,
                                    "v_status": r.status, "v_code": r.reason_code,
                                    "v_reason": r.reason} for r in unsent])
    return now


_LINKED = update(_WRITES).where(_C.id == bindparam("row_id")).values(
    contact_id=bindparam("v_contact", type_=_C.contact_id.type),
    status=WriteStatus.pending, reason_code=None, reason=None, updated_at=_NOW)


def link_rows(engine: Engine, links: Sequence[tuple[int, str]]) -> None:
    """Point rows at their resolved contact (pending again, if a replay re-opened them)."""
    if not links:
        return
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(_LINKED, [{"row_id": i, "v_contact": c, "now": now} for i, c in links])


def defer_open(engine: Engine, sel: Selection, reason: Reason, detail: str | None = None,
               http_status: int | None = None) -> None:
    """Leave the selection's pending rows pending, saying why they wait."""
    pending = Selection(sel.location_id, (WriteStatus.pending,), sel.drop_ids, sel.since)
    with engine.connect() as conn:
        ids = list(conn.execute(pending.where(select(_C.id))).scalars())
    mark(engine, ids, WriteStatus.pending, reason=reason, detail=detail,
         http_status=http_status)


# -- contacts whose notes this store has read ------------------------------------------------

_SETTLED = SettledContact.__table__  # type: ignore[attr-defined]


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
    with Session(engine) as s:
        insert_ignore(s, [SettledContact(location_id=location_id, contact_id=contact_id)])
        s.commit()


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
