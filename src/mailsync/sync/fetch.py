"""Incremental fetch of one campaign: page, normalise, diff and plan, a transaction per page.

Postalytics' events endpoint has no cursor and no "since" filter; it pages by offset, newest
first. So a run pages from the top until a whole page is already stored *and* older than the
lookback window (the cursor minus `lookback_hours`), or the pages end. Events that arrive
while paging push the pages down: a page may repeat events (harmless: keys are
deterministic), and the new ones sit on page 1, which a closing re-scan of the top collects.
A page cap bounds one run; the next run skips the known top and continues where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailsync.config import CampaignConfig
from mailsync.store.models import Campaign, MailEvent, QuarantinedEvent, utcnow
from mailsync.store.ops import insert_ignore
from mailsync.sync import failpoints
from mailsync.sync.normalise import Normalised, normalise
from mailsync.sync.plan import plan_writes

log = logging.getLogger("mailsync.fetch")

PAGE_SIZE = 100
FetchPage = Callable[[int, int], Awaitable[list[Any]]]
"""(page_number, page_size) → raw events of that page, newest first."""


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


@dataclass
class _Page:
    raw_count: int
    all_known: bool
    all_old: bool
    new_events: int


def _store_page(session: Session, raws: list[Any], campaign: CampaignConfig,
                run_id: str | None, cutoff: datetime | None, result: CampaignResult,
                seen: set[str]) -> _Page:
    """Store one page's new events, quarantine and ledger rows in the session.

    `seen` holds the keys (events, quarantine, intents) stored earlier in this run: a dry run
    rolls every page back, so the database alone cannot tell it what it has already counted.
    """
    items: list[Normalised] = [normalise(r, campaign.drop_id, campaign.contact_id_field, run_id)
                               for r in raws]
    events = {n.event.key: n.event for n in items if n.event is not None}
    quarantined = {n.quarantine.fingerprint: n.quarantine for n in items
                   if n.quarantine is not None}
    known = set(session.exec(select(MailEvent.key).where(
        col(MailEvent.key).in_(list(events)))).all()) if events else set()
    known |= set(session.exec(select(QuarantinedEvent.fingerprint).where(
        col(QuarantinedEvent.fingerprint).in_(list(quarantined))))) if quarantined else set()
    known |= seen & (set(events) | set(quarantined))

    inserted = set(insert_ignore(session, list(events.values()))) - seen
    new = [e for k, e in events.items() if k in inserted]
    rows = plan_writes(new, campaign, run_id)
    planned = set(insert_ignore(session, rows, returning="intent_key")) - seen
    result.quarantined += len(set(insert_ignore(session, list(quarantined.values()))) - seen)
    seen |= inserted | planned | set(quarantined)
    result.new_events += len(new)
    result.planned += len(planned)
    for row in rows:
        if row.intent_key in planned:
            result.planned_by_kind[row.kind] = result.planned_by_kind.get(row.kind, 0) + 1
    if events:
        newest = max(e.event_at for e in events.values())
        camp = session.get(Campaign, campaign.drop_id) or _ensure_campaign(session, campaign)
        if camp.newest_event_at is None or newest > camp.newest_event_at:
            camp.newest_event_at = newest
            session.add(camp)
    all_known = all(n.key in known for n in items)
    all_old = cutoff is not None and all(e.event_at < cutoff for e in events.values())
    return _Page(len(raws), all_known, all_old, len(new))


def _ensure_campaign(session: Session, campaign: CampaignConfig) -> Campaign:
    insert_ignore(session, [Campaign(drop_id=campaign.drop_id, name=campaign.name,
                                     country=campaign.country, location_id=campaign.location)])
    camp = session.get(Campaign, campaign.drop_id)
    assert camp is not None
    return camp


async def fetch_campaign(
    engine: Engine, fetch_page: FetchPage, campaign: CampaignConfig, *,
    run_id: str | None = None, lookback_hours: float | None = None,
    max_pages: int | None = None, dry_run: bool = False, page_size: int = PAGE_SIZE,
    on_page: Callable[[CampaignResult], None] | None = None,
) -> CampaignResult:
    """Fetch a campaign's new events into the store with the ledger rows they cause.

    Each page is one transaction (events, quarantine, ledger rows, cursor), so a crash loses
    nothing and repeats nothing. In a dry run every transaction is rolled back.
    """
    result = CampaignResult(campaign.drop_id)
    lookback = timedelta(hours=lookback_hours or campaign.lookback_hours)
    cap = max_pages or campaign.max_pages
    with Session(engine, expire_on_commit=False) as session:
        camp = _ensure_campaign(session, campaign)
        cutoff = camp.newest_event_at - lookback if camp.newest_event_at else None
        resume_offset = camp.resume_offset
        seen: set[str] = set()
        if dry_run:
            session.rollback()
        else:
            session.commit()

        async def read(page_no: int) -> _Page:
            raws = await fetch_page(page_no, page_size)
            page = _store_page(session, raws, campaign, run_id, cutoff, result, seen)
            # A dry run ends every page's transaction too: holding one open across the HTTP
            # calls would block every other writer of a SQLite store.
            if dry_run:
                session.rollback()
            else:
                session.commit()
            failpoints.hit("page-stored")
            result.pages += 1
            result.fetched += len(raws)
            if on_page:
                on_page(result)
            return page

        page_no, new_at_top, ended, backfilling = 1, 0, False, False
        while True:
            if result.pages >= cap:
                break
            page = await read(page_no)
            if page.raw_count < page_size:
                ended = True
                break
            new_at_top += page.new_events
            if backfilling:  # below the known top after a jump: read on to the end
                page_no += 1
                continue
            if page.all_known and resume_offset is None and page.all_old:
                ended = True
                break
            if page.all_known and resume_offset is not None:
                # An earlier run stopped at its page cap: the stored events below the known
                # top have moved down by the number of events added since; continue there,
                # one page early so a miscount repeats events rather than skips them.
                page_no = max(page_no + 1, (resume_offset + new_at_top) // page_size)
                backfilling = True
                continue
            page_no += 1

        # Events that arrived while we paged sit on top now: re-read until nothing is new.
        # (After a single page there was no "while": the next run collects them.)
        top = 1
        while ended and 1 < result.pages < cap + 5:
            page = await read(top)
            if page.new_events == 0 or page.raw_count < page_size:
                break
            top += 1

        # A dry run rolled back its first sight of a new campaign: ensure it again.
        camp = session.get(Campaign, campaign.drop_id) or _ensure_campaign(session, campaign)
        camp.last_fetched_at = utcnow()
        if ended:
            camp.resume_offset = None
        else:
            result.capped = True
            camp.resume_offset = (page_no - 1) * page_size
            log.warning("campaign %s: page cap of %d reached at page %d; the next run continues",
                        campaign.drop_id, cap, page_no)
        session.add(camp)
        if dry_run:
            session.rollback()
        else:
            session.commit()
    return result
