"""Incremental fetch of one campaign: page, normalise, diff and plan, each page kept whole.

Postalytics' events endpoint has no cursor and no "since" filter; it pages by offset, newest
first. Three parts, in the manner of dlt's incremental cursor and singer-sdk's paginators:
the campaign's bookmark (`store.bookmark`: the cursor, a lookback before it, where a capped
walk stopped), loaded before the walk and saved after it; a pure page walker
(`sync.walker`) that decides the next page from what each page held; and here, each page's
new events, quarantine rows and ledger rows stored together in a savepoint of a transaction
the campaigns fetched at once share and commit every few pages (`store.group_commit`; a dry
run rolls each page back), so a crash loses nothing and repeats nothing: it loses at most
the pages not committed yet, and the walk reads them again.

Within a page one bad record never blocks another: text a database cannot hold is cleaned
in normalisation, and a row the database still refuses is quarantined alone (`unstorable`)
while the rest of its page is stored. An event id served again with another code, date or
recipient is quarantined (`id_reused`), once.

An event a webhook stored first (`sync.match`) is one row with the one the poll reads: the
poll finds it by its match key, the row learns the REST key (so later walks see it as
stored and `id_reused` still applies to it), and webhook events waiting for the poll to
say who their person is get their writes planned.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailsync.config import CampaignConfig
from mailsync.store.bookmark import load_bookmark, save_bookmark
from mailsync.store.group_commit import campaign_writes
from mailsync.store.models import Campaign, MailEvent, QuarantinedEvent, WriteIntent, utcnow
from mailsync.store.ops import insert_ignore, rows_where_in, write_isolating
from mailsync.store.reasons import QuarantineReason
from mailsync.sync import failpoints
from mailsync.sync.match import PollMatch, identify_waiting, read_before, sort_polled
from mailsync.sync.normalise import fingerprint, normalise, quarantined
from mailsync.sync.plan import plan_writes
from mailsync.sync.walker import PAGE_SIZE, PageSeen, PageWalker, Stop

__all__ = ["PAGE_SIZE", "CampaignResult", "FetchPage", "fetch_campaign"]

log = logging.getLogger("mailsync.fetch")

FetchPage = Callable[[int, int], Awaitable[list[Any]]]
"""(page_number, page_size) → raw events of that page, newest first."""
OnPlan = Callable[[Sequence[WriteIntent], Sequence[MailEvent]], None]
"""Told each page's newly planned ledger rows and the new events that caused them (a dry
run rolls them back, so this is the only way to see what it would write)."""

_EVENTS = MailEvent.__table__  # type: ignore[attr-defined]

Identity = tuple[str, datetime, str]
"""What an event id must keep meaning: its code, time and recipient."""


@dataclass
class CampaignResult:
    """What one campaign's fetch and plan did."""

    drop_id: str
    pages: int = 0
    fetched: int = 0
    new_events: int = 0
    quarantined: int = 0
    planned: int = 0
    capped: bool = False
    planned_by_kind: dict[str, int] = field(default_factory=dict)
    stopped: Stop | None = None
    """Why the walk over the events stopped."""
    webhook_first: int = 0
    """Events read that a webhook had stored first (one row each, written once)."""


@dataclass
class _Memo:
    """What this run has read and stored that the store cannot tell it."""

    rolled_back: bool = False
    """A dry run: every page is rolled back, so the store does not know what this run has
    stored and planned (`events`, `intents`, kept only then: a run that commits asks the
    store, and holding every event's identity grew the memory of a large run)."""
    events: dict[str, Identity] = field(default_factory=dict)
    quarantined: set[str] = field(default_factory=set)
    intents: set[str] = field(default_factory=set)
    read: set[str] = field(default_factory=set)
    """Every item key read: one read again means the pages shifted under new arrivals."""
    unstorable: set[str] = field(default_factory=set)
    """Fingerprints of events the database refused, in this run or an earlier one."""


@dataclass(frozen=True)
class _Scope:
    campaign: CampaignConfig
    run_id: str | None
    cutoff: datetime | None
    memo: _Memo
    on_plan: OnPlan | None = None


@dataclass(frozen=True)
class _Written:
    new: list[MailEvent]
    planned: list[WriteIntent]


def _identity(event: MailEvent) -> Identity:
    return (event.code, event.event_at, event.recipient_key)


def _differences(stored: Identity, served: MailEvent) -> str:
    names = ("code", "date", "recipient")
    pairs = zip(names, stored, _identity(served), strict=True)
    changed = [f"{name} stored {_shown(old)}, served {_shown(new)}"
               for name, old, new in pairs if old != new]
    return f"event {served.key}: " + "; ".join(changed)


def _shown(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _stored_identities(session: Session, by_key: dict[str, list[tuple[object, MailEvent]]],
                       memo: _Memo) -> dict[str, Identity]:
    found = {k: memo.events[k] for k in by_key if k in memo.events}
    ask = [k for k in by_key if k not in found]
    if ask:
        rows = rows_where_in(session.connection(), _EVENTS,
                             ("key", "code", "event_at", "recipient_key"), "key", ask)
        found.update({key: (code, at, rkey) for key, code, at, rkey in rows})
        # Events a webhook stored first that an earlier walk read: known by their REST key.
        rest = [k for k in ask if k not in found]
        if rest:
            for key, row in read_before(session, rest).items():
                found[key] = row.identity_for(by_key[key][0][1])
    return found


def _sort_page(session: Session, items: list[tuple[object, MailEvent]], scope: _Scope
               ) -> tuple[list[tuple[object, MailEvent]], list[QuarantinedEvent]]:
    """The page's events not stored yet, and the quarantine rows for ids served again with
    other content (compared with the stored event, or the first on the page)."""
    drop_id, memo = scope.campaign.drop_id, scope.memo
    by_key: dict[str, list[tuple[object, MailEvent]]] = {}
    for raw, event in items:
        by_key.setdefault(event.key, []).append((raw, event))
    stored = _stored_identities(session, by_key, memo)
    fresh: list[tuple[object, MailEvent]] = []
    reused: list[QuarantinedEvent] = []
    for key, seen in by_key.items():
        reference = stored.get(key)
        if reference is None:
            raw, event = seen[0]
            # Refused by the database before: retrying would fail the page's batch every run.
            if not (memo.unstorable and fingerprint(raw, drop_id) in memo.unstorable):
                fresh.append((raw, event))
            if len(seen) == 1:  # nearly always: nothing to compare it with
                continue
            reference = _identity(event)
        reused += [quarantined(raw, drop_id, QuarantineReason.id_reused,
                               _differences(reference, event), scope.run_id)
                   for raw, event in seen if _identity(event) != reference]
    return fresh, reused


def _write_events(session: Session, scope: _Scope, items: Sequence[tuple[object, MailEvent]]
                  ) -> _Written:
    """Insert new events and the ledger rows they cause."""
    events = [event for _, event in items]
    inserted = set(insert_ignore(session, events))
    new = [e for e in events if e.key in inserted]
    rows = plan_writes(new, scope.campaign, scope.run_id)
    planned = set(insert_ignore(session, rows, returning="intent_key"))
    unique = {r.intent_key: r for r in reversed(rows) if r.intent_key in planned}
    return _Written(new, list(unique.values()))


def _identify_waiting(session: Session, scope: _Scope, polled: PollMatch) -> _Written:
    """Plan the writes of webhook events whose person this page's events identify."""
    _, rows = identify_waiting(session, scope.campaign, polled, scope.run_id)
    return _Written([], rows)


def _insert_quarantine(session: Session, rows: list[QuarantinedEvent], memo: _Memo) -> int:
    fresh = {q.fingerprint: q for q in rows if q.fingerprint not in memo.quarantined}
    inserted = insert_ignore(session, list(fresh.values()))
    memo.quarantined |= set(fresh)
    return len(inserted)


def _tally(written: list[_Written], memo: _Memo, result: CampaignResult,
           on_plan: OnPlan | None = None) -> int:
    new_events = 0
    for w in written:
        new_events += len(w.new)
        # Planned rows were inserted now, each once; a dry run rolled the earlier ones back.
        fresh = w.planned
        if memo.rolled_back:
            memo.events.update((e.key, _identity(e)) for e in w.new)
            fresh = [r for r in w.planned if r.intent_key not in memo.intents]
            memo.intents.update(r.intent_key for r in fresh)
        result.planned += len(fresh)
        for kind in [r.kind for r in fresh]:
            result.planned_by_kind[kind] = result.planned_by_kind.get(kind, 0) + 1
        if on_plan is not None and fresh:
            on_plan(fresh, w.new)
    result.new_events += new_events
    return new_events


def _store_page(session: Session, raws: list[Any], scope: _Scope,
                result: CampaignResult) -> PageSeen:
    """Store one page's new events, quarantine and ledger rows in the session."""
    campaign, memo = scope.campaign, scope.memo
    now = utcnow()  # one time for the page: each distinct time costs a conversion to store
    normalised = [(raw, normalise(raw, campaign.drop_id, campaign.contact_id_field,
                                  scope.run_id, fetched_at=now)) for raw in raws]
    keys = [n.key for _, n in normalised]
    repeats = sum(1 for k in keys if k in memo.read)
    memo.read.update(keys)
    events = [(raw, n.event) for raw, n in normalised if n.event is not None]
    fresh, quarantine = _sort_page(session, events, scope)
    polled = sort_polled(session, fresh)
    fresh = polled.fresh
    if memo.rolled_back:
        memo.events.update((e.key, _identity(e)) for e in polled.absorbed)
    quarantine += [n.quarantine for _, n in normalised if n.quarantine is not None]

    written, refused = write_isolating(session, fresh, partial(_write_events, session, scope))
    for (raw, event), error in refused:
        log.warning("campaign %s: the database refused event %s; quarantined",
                    campaign.drop_id, event.key)
        row = quarantined(raw, campaign.drop_id, QuarantineReason.unstorable, error,
                          scope.run_id)
        memo.unstorable.add(row.fingerprint)
        quarantine.append(row)
    new_quarantine = _insert_quarantine(session, quarantine, memo)
    result.quarantined += new_quarantine
    written.append(_identify_waiting(session, scope, polled))
    result.webhook_first += len(polled.absorbed)
    new_events = _tally(written, memo, result, scope.on_plan)

    cutoff = scope.cutoff
    return PageSeen(
        # An event a webhook stored first is new to the list all the same: it moved the
        # pages down, and this walk had not read it.
        raw_count=len(raws), new_events=new_events + len(polled.absorbed), repeats=repeats,
        all_known=not fresh and not polled.absorbed and new_quarantine == 0,
        ends_old=cutoff is not None and bool(events) and events[-1][1].event_at < cutoff)


def _unstorable(session: Session, drop_id: str) -> set[str]:
    return set(session.exec(select(QuarantinedEvent.fingerprint).where(
        QuarantinedEvent.drop_id == drop_id,
        QuarantinedEvent.reason_code == QuarantineReason.unstorable)).all())


async def fetch_campaign(
    engine: Engine, fetch_page: FetchPage, campaign: CampaignConfig, *,
    run_id: str | None = None, lookback_hours: float | None = None,
    max_pages: int | None = None, dry_run: bool = False, page_size: int = PAGE_SIZE,
    on_page: Callable[[CampaignResult], None] | None = None,
    on_plan: OnPlan | None = None,
) -> CampaignResult:
    """Fetch a campaign's new events into the store with the ledger rows they cause.

    Each page is stored whole (events, quarantine, ledger rows), its commit shared with the
    pages before it; the bookmark is saved, and committed with the walk's last pages, once
    the walk ends. In a dry run every page is rolled back.
    """
    result = CampaignResult(campaign.drop_id)
    hours = campaign.lookback_hours if lookback_hours is None else lookback_hours
    row = Campaign(drop_id=campaign.drop_id, name=campaign.name, country=campaign.country,
                   location_id=campaign.location)
    with campaign_writes(engine, dry_run) as writes:
        with writes.page() as session:
            bookmark = load_bookmark(session, row)
            unstorable = _unstorable(session, campaign.drop_id)
        scope = _Scope(campaign, run_id, bookmark.cutoff(timedelta(hours=hours)),
                       _Memo(dry_run, unstorable=unstorable), on_plan)
        walker = PageWalker(max_pages or campaign.max_pages, bookmark.resume_offset, page_size)
        while (request := walker.next_page()) is not None:
            raws = await fetch_page(request.number, request.size)
            with writes.page() as session:
                seen = _store_page(session, raws, scope, result)
            failpoints.hit("page-stored")
            walker.record(seen)
            result.pages += 1
            result.fetched += len(raws)
            if on_page:
                on_page(result)
        result.stopped = walker.stop
        result.capped = walker.stop is Stop.capped
        with writes.page() as session:
            save_bookmark(session, row, complete=not result.capped,
                          resume_offset=walker.covered)
        writes.commit()
    if result.capped:
        log.warning("campaign %s: page cap of %d reached %d events from the top; the next run "
                    "continues there", campaign.drop_id, walker.max_pages, walker.covered)
    return result
