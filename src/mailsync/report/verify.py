"""Live checks behind the report: drift in HighLevel (`verify`) and events never stored.

`verify` reads back the HighLevel contacts that done writes touched and lists the tags and
notes that should be there and are not (a user removed them, a contact was deleted). Only
with `fix=True` does it re-open those ledger rows (`pending`, reason "drift: ..."), so the
next sync or a replay writes them again; without it, it only reports.

`unstored_events` pages a campaign's events at Postalytics over a window and lists those the
store does not have (a run that never happened, a page cap, a crash before commit).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailsync.clients.auth import location_label
from mailsync.clients.highlevel import HighLevelAuthError, HighLevelClient
from mailsync.clients.http import CallStatus, Outcome
from mailsync.clients.messages import REASON_CAP, one_line
from mailsync.clients.postalytics import PostalyticsClient
from mailsync.codes import tag_key
from mailsync.config import CampaignConfig, ConfigError
from mailsync.redact import redact
from mailsync.report.load import ReportScope, utc
from mailsync.report.model import DriftFinding
from mailsync.report.rules import DRIFT_DETAIL
from mailsync.store.leases import HeldLease, hold_lease, worker_identity
from mailsync.store.models import MailEvent, WriteIntent, WriteKind, WriteStatus, utcnow
from mailsync.store.reasons import Reason
from mailsync.sync.context import SyncContext
from mailsync.sync.normalise import normalise
from mailsync.sync.notes import has_marker

log = logging.getLogger("mailsync.reconcile")

GONE = "the contact no longer exists in HighLevel"


@dataclass(frozen=True)
class Unchecked:
    """Contacts of a location verify could not read, and why (one reason, many contacts)."""

    location_id: str
    reason: str
    contacts: int


@dataclass
class VerifyResult:
    """What verify found: drifted writes, how many contacts it read, what it could not read.

    It never claims what it did not check: `contacts_checked` counts contacts read in full,
    `unchecked` the others with why, and `errors` says the same in one line per location and
    reason.
    """

    drift: list[DriftFinding] = field(default_factory=list)
    contacts_checked: int = 0
    errors: list[str] = field(default_factory=list)
    fixed: int = 0
    """Ledger rows re-opened (only with fix=True)."""
    unchecked: list[Unchecked] = field(default_factory=list)

    @property
    def contacts_unchecked(self) -> int:
        """Contacts that could not be read (in full)."""
        return sum(u.contacts for u in self.unchecked)

    @property
    def complete(self) -> bool:
        """Whether every contact in range was read."""
        return not self.unchecked


def _touched(engine: Engine, since: datetime | None, until: datetime | None,
             drop_ids: Sequence[str] | None) -> dict[str, dict[str, list[WriteIntent]]]:
    """location → contact → every tag/untag/note row of contacts with done writes in range."""
    with Session(engine) as s:
        q = select(WriteIntent.contact_id).where(
            WriteIntent.status == WriteStatus.done, col(WriteIntent.contact_id).is_not(None))
        if drop_ids:
            q = q.where(col(WriteIntent.drop_id).in_(list(drop_ids)))
        if since is not None:
            q = q.where(col(WriteIntent.created_at) >= since)
        if until is not None:
            q = q.where(col(WriteIntent.created_at) <= until)
        contacts = sorted({c for c in s.exec(q.distinct()).all() if c})
        rows: list[WriteIntent] = []
        for start in range(0, len(contacts), 500):
            rows += s.exec(select(WriteIntent).where(
                col(WriteIntent.contact_id).in_(contacts[start:start + 500]))).all()
    out: dict[str, dict[str, list[WriteIntent]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        out[r.location_id][r.contact_id or ""].append(r)
    return out


def _finding(r: WriteIntent, detail: str) -> DriftFinding:
    return DriftFinding(ledger_id=r.id or 0, detail=detail, location_id=r.location_id,
                        contact_id=r.contact_id or "", drop_id=r.drop_id, code=r.code,
                        kind=r.kind)


@dataclass(frozen=True)
class _Expected:
    """The done writes of one contact that HighLevel should still show."""

    tags: list[WriteIntent]
    notes: list[WriteIntent]

    def all_gone(self) -> list[DriftFinding]:
        """Every expected write as drift: the contact itself is gone."""
        return [_finding(r, GONE) for r in self.tags + self.notes]


def _expected(rows: list[WriteIntent]) -> _Expected:
    """Done tags (unless a tag/untag row for the same tag is still open) and done notes."""
    done = [r for r in rows if r.status == WriteStatus.done]
    # A tag with an open tag/untag row may be absent on purpose (retrigger half-way).
    unsettled = {tag_key(r.tag or "") for r in rows
                 if r.kind in (WriteKind.tag, WriteKind.untag) and r.status != WriteStatus.done}
    return _Expected(
        tags=[r for r in done if r.kind == WriteKind.tag and tag_key(r.tag or "") not in unsettled],
        notes=[r for r in done if r.kind == WriteKind.note])


@dataclass(frozen=True)
class _Read:
    """One read of a contact: what it holds, or that the contact is gone, or why it failed."""

    values: list[str] = field(default_factory=list)
    gone: bool = False
    error: str | None = None
    unreachable: bool = False
    """HighLevel could not be reached: no other contact of the location can be read now."""


def _is_gone(out: Outcome) -> bool:
    return out.contact_gone  # 404, or a 400/422 saying the contact is not found


async def _read_tags(hl: HighLevelClient, contact_id: str) -> _Read:
    """The contact's tags, compared as `tag_key`s."""
    got = await hl.get_contact(contact_id)
    if _is_gone(got):
        return _Read(gone=True)
    if got.status != CallStatus.ok or not isinstance(got.data, dict):
        # The reason alone (no contact id): one cause is told once for all its contacts.
        return _Read(error=got.reason or f"HTTP {got.http_status}",
                     unreachable=got.unreachable)
    return _Read(values=[tag_key(str(t)) for t in got.data.get("tags") or []])


async def _read_notes(hl: HighLevelClient, contact_id: str) -> _Read:
    """The bodies of the contact's notes."""
    listing = await hl.list_notes(contact_id)
    if _is_gone(listing):
        return _Read(gone=True)
    if listing.status != CallStatus.ok:
        return _Read(error=listing.reason or f"HTTP {listing.http_status}",
                     unreachable=listing.unreachable)
    return _Read(values=[str(n.get("body") or "") for n in listing.data or []
                         if isinstance(n, dict)])


def _missing_tags(tags: list[WriteIntent], have: list[str]) -> list[DriftFinding]:
    present = set(have)
    return [_finding(r, DRIFT_DETAIL) for r in tags if tag_key(r.tag or "") not in present]


def _missing_notes(notes: list[WriteIntent], bodies: list[str]) -> list[DriftFinding]:
    return [_finding(r, DRIFT_DETAIL) for r in notes
            if not any(has_marker(b, r.marker or "") for b in bodies)]


@dataclass(frozen=True)
class _Check:
    """One contact's check: the drift found, or why it could not be read in full."""

    found: list[DriftFinding] = field(default_factory=list)
    error: str | None = None
    unreachable: bool = False


async def _check_contact(hl: HighLevelClient, contact_id: str, rows: list[WriteIntent]
                         ) -> _Check:
    """Drift on one contact, or why HighLevel could not be read.

    Tags first: a contact that is gone is then known without listing its notes.
    """
    want = _expected(rows)
    found: list[DriftFinding] = []
    if want.tags:
        tags = await _read_tags(hl, contact_id)
        if tags.gone:
            return _Check(want.all_gone())
        if tags.error:
            return _Check(error=tags.error, unreachable=tags.unreachable)
        found += _missing_tags(want.tags, tags.values)
    if want.notes:
        notes = await _read_notes(hl, contact_id)
        if notes.gone:
            return _Check(want.all_gone())
        if notes.error:
            # The tags were read: what is missing among them is drift all the same.
            return _Check(found, notes.error, notes.unreachable)
        found += _missing_notes(want.notes, notes.values)
    return _Check(found)


LEASE_BUSY = ("another worker is applying this location (it holds the location's lease): "
              "run verify again when it is done")
LEASE_LOST = "lost the location's lease to another worker part-way: run verify again"


@dataclass
class _LocationCheck:
    """One location's check as it goes: the contacts it could not read, by reason, and the
    reason that stops it (HighLevel unreachable, the token refused): told once, not per
    contact, and no further contact is tried."""

    location_id: str
    not_read: Counter[str] = field(default_factory=Counter)
    stop: str | None = None

    def skip(self, reason: str, contacts: int = 1) -> None:
        self.not_read[reason] += contacts

    def stopped_by(self, reason: str) -> None:
        self.stop = self.stop or reason
        self.skip(reason)


async def _check_all(ctx: SyncContext, check: _LocationCheck, lease: HeldLease,
                     contacts: dict[str, list[WriteIntent]], result: VerifyResult,
                     concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)
    async with ctx.highlevel(check.location_id) as hl:
        async def one(contact_id: str, rows: list[WriteIntent]) -> None:
            async with sem:
                if check.stop or lease.lost:
                    check.skip(check.stop or LEASE_LOST)
                    return
                try:
                    done = await _check_contact(hl, contact_id, rows)
                except HighLevelAuthError as exc:
                    check.stopped_by(one_line(redact(exc), REASON_CAP))
                    return
            result.drift += done.found
            if done.error is None:
                result.contacts_checked += 1
            elif done.unreachable:
                check.stopped_by(done.error)
            else:
                check.skip(done.error)

        await asyncio.gather(*(one(c, rs) for c, rs in contacts.items()))


async def _verify_location(ctx: SyncContext, location_id: str,
                           contacts: dict[str, list[WriteIntent]], result: VerifyResult,
                           concurrency: int) -> None:
    check = _LocationCheck(location_id)
    # Reads count against the location's rate limit too: hold its lease, so a sync applying
    # the same location elsewhere is never out-paced. A busy location is skipped, and says so.
    async with hold_lease(ctx.engine, location_id, worker_identity()) as lease:
        if lease is None:
            check.skip(LEASE_BUSY, len(contacts))
        else:
            try:
                await _check_all(ctx, check, lease, contacts, result, concurrency)
            except (ConfigError, HighLevelAuthError) as exc:
                # No client could be made (a token not set) or had: nothing was read.
                check.skip(one_line(redact(exc), REASON_CAP), len(contacts))
    result.unchecked += [Unchecked(location_id, reason, n)
                         for reason, n in check.not_read.most_common()]


def _unchecked_lines(ctx: SyncContext, unchecked: Sequence[Unchecked]) -> list[str]:
    """One line per location and reason: `location Boston (loc-1): could not check 49
    contact(s): cannot reach HighLevel at ...`."""
    out = []
    for u in unchecked:
        try:
            name = ctx.settings.location(u.location_id).name
        except KeyError:
            name = None
        where = location_label(u.location_id, name)
        out.append(f"{where}: could not check {u.contacts} contact(s): {u.reason}")
    return out


async def verify(ctx: SyncContext, *, since: datetime | None = None,
                 until: datetime | None = None, drop_ids: Sequence[str] | None = None,
                 fix: bool = False, concurrency: int = 8) -> VerifyResult:
    """Read back the contacts done writes touched; list (and with `fix`, re-open) drift."""
    touched = _touched(ctx.engine, utc(since), utc(until), drop_ids)
    result = VerifyResult()
    await asyncio.gather(*(_verify_location(ctx, loc, contacts, result, concurrency)
                           for loc, contacts in sorted(touched.items())))
    result.drift.sort(key=lambda d: d.ledger_id)
    result.errors = _unchecked_lines(ctx, result.unchecked)
    if fix and result.drift:
        result.fixed = reopen(ctx.engine, result.drift)
    return result


def reopen(engine: Engine, findings: Sequence[DriftFinding]) -> int:
    """Mark drifted rows `pending` with the drift reason (only rows still `done`)."""
    by_detail: dict[str, list[int]] = defaultdict(list)
    for f in findings:
        by_detail[f.detail].append(f.ledger_id)
    n = 0
    with Session(engine) as s:
        for detail, ids in by_detail.items():
            res = s.execute(update(WriteIntent)
                            .where(col(WriteIntent.id).in_(ids),
                                   WriteIntent.status == WriteStatus.done)
                            .values(status=WriteStatus.pending, reason_code=Reason.drift,
                                    reason=detail, updated_at=utcnow()))
            n += res.rowcount or 0  # type: ignore[attr-defined]
        s.commit()
    return n


PAGE_SIZE = 100
"""Events per Postalytics page read by `unstored_events`."""


def _stored_keys(engine: Engine, keys: list[str]) -> set[str]:
    with Session(engine) as s:
        return set(s.exec(select(MailEvent.key).where(col(MailEvent.key).in_(keys))).all())


def _unstored_item(drop_id: str, e: MailEvent) -> dict[str, Any]:
    return {"drop_id": drop_id, "event_key": e.key, "code": e.code, "event_at": e.event_at,
            "recipient": " ".join(p for p in (e.first_name, e.last_name) if p),
            "email": e.email}


def _readable(raws: list[Any], camp: CampaignConfig) -> list[MailEvent]:
    """The page's events that normalise (the rest would be quarantined, never stored)."""
    found = (normalise(r, camp.drop_id, camp.contact_id_field) for r in raws)
    return [n.event for n in found if n.event is not None]


async def _campaign_unstored(pa: PostalyticsClient, engine: Engine, camp: CampaignConfig,
                             window: ReportScope, max_pages: int) -> list[dict[str, Any]]:
    """One campaign's events at Postalytics inside the window that the store lacks."""
    out: list[dict[str, Any]] = []
    for page_no in range(1, max_pages + 1):
        raws = await pa.events_page(camp.drop_id, page_no, PAGE_SIZE)
        events = _readable(raws, camp)
        inside = [e for e in events if window.covers(e.event_at)]
        if inside:
            known = _stored_keys(engine, [e.key for e in inside])
            out += [_unstored_item(camp.drop_id, e) for e in inside if e.key not in known]
        # Pages run newest first: a page wholly before the window ends the campaign.
        before = window.since is not None and all(e.event_at < window.since for e in events)
        if len(raws) < PAGE_SIZE or (events and before):
            break
    return out


async def unstored_events(ctx: SyncContext, *, since: datetime | None = None,
                          until: datetime | None = None, drop_ids: Sequence[str] | None = None,
                          max_pages: int = 100) -> list[dict[str, Any]]:
    """Events Postalytics has in the window (by event date) that the store does not have."""
    window = ReportScope(None, utc(since), utc(until), None)
    campaigns = [c for c in ctx.settings.campaigns if not drop_ids or c.drop_id in drop_ids]
    out: list[dict[str, Any]] = []
    async with ctx.postalytics() as pa:
        for camp in campaigns:
            out += await _campaign_unstored(pa, ctx.engine, camp, window, max_pages)
    return out
