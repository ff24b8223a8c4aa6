"""Incremental fetch over offset pages, newest first: nothing missed, nothing planned twice."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlmodel import Session, func, select

from mailsync.config import CampaignConfig
from mailsync.store.engine import get_engine
from mailsync.store.models import Campaign, MailEvent, QuarantinedEvent, WriteIntent
from mailsync.sync.fetch import fetch_campaign

T0 = datetime(2026, 11, 2, tzinfo=UTC)
CAMPAIGN = CampaignConfig(drop_id="7", location="loc", events=["Mailed", "pURLOpened"],
                          retrigger=["pURLOpened"])


class Feed:
    """Postalytics' events endpoint in miniature: newest first, paged by offset."""

    def __init__(self) -> None:
        self.events: list[dict] = []  # oldest first
        self.requests: list[int] = []
        self.between_pages = None

    def add(self, n: int, code: str = "Mailed", hours: float = 0.0) -> None:
        for _ in range(n):
            i = len(self.events)
            self.events.append({"EventId": f"ev{i}", "Event": code, "DataId": i % 37,
                                "EventDate": (T0 + timedelta(hours=hours, seconds=i)).isoformat()})

    async def page(self, number: int, size: int) -> list[dict]:
        self.requests.append(number)
        newest_first = self.events[::-1]
        out = newest_first[(number - 1) * size: number * size]
        if self.between_pages:
            self.between_pages(number)
        return out


def count(engine, model) -> int:
    with Session(engine) as s:
        return s.exec(select(func.count()).select_from(model)).one()


def run(engine, feed, **kw):
    return asyncio.run(fetch_campaign(engine, feed.page, CAMPAIGN, page_size=10, **kw))


def test_first_run_backfills_then_runs_stop_at_known_old_pages(sqlite_url):
    engine = get_engine(sqlite_url)
    feed = Feed()
    feed.add(95)
    first = run(engine, feed)
    assert (first.new_events, count(engine, MailEvent)) == (95, 95)
    assert first.planned == count(engine, WriteIntent) > 0
    feed.add(30, hours=100)
    assert run(engine, feed).new_events == 30  # everything within 72 h of the cursor: re-read
    feed.add(5, hours=200)
    feed.requests.clear()
    third = run(engine, feed)
    assert third.new_events == 5
    # pages 1-4 hold the new and the recent events; the first page of events older than the
    # lookback ends the scan, then page 1 is read again for late arrivals: 13 pages exist.
    assert feed.requests == [1, 2, 3, 4, 5, 1], feed.requests
    again = run(engine, feed)
    assert again.new_events == 0 and again.planned == 0


def test_events_arriving_while_paging_are_not_missed(sqlite_url):
    engine = get_engine(sqlite_url)
    feed = Feed()
    feed.add(60)
    arrivals = iter([3, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0])

    def arrive(_page: int) -> None:
        feed.add(next(arrivals, 0), hours=1)

    feed.between_pages = arrive
    run(engine, feed)
    feed.between_pages = None
    with Session(engine) as s:
        stored = set(s.exec(select(MailEvent.key)).all())
    assert stored == {f"e:7:{e['EventId']}" for e in feed.events}


def test_page_cap_is_logged_and_the_next_run_continues(sqlite_url, caplog):
    engine = get_engine(sqlite_url)
    feed = Feed()
    feed.add(100)
    first = run(engine, feed, max_pages=4)
    assert first.capped and first.new_events == 40
    assert "page cap of 4 reached" in caplog.text
    feed.add(7, hours=300)
    while True:
        res = run(engine, feed, max_pages=4)
        if not res.capped:
            break
    assert count(engine, MailEvent) == 107
    with Session(engine) as s:
        assert s.get(Campaign, "7").resume_offset is None


def test_retrigger_codes_plan_a_removal_and_re_add_per_visit(sqlite_url):
    engine = get_engine(sqlite_url)
    feed = Feed()
    feed.events = [{"EventId": f"v{i}", "Event": "pURL Opened", "DataId": 1,
                    "EventDate": (T0 + timedelta(hours=i)).isoformat()} for i in range(3)]
    feed.events.append({"EventId": "m", "Event": "Mailed", "DataId": 1,
                        "EventDate": T0.isoformat()})
    feed.events.append({"EventId": "x", "Event": "In Transit", "DataId": 1,
                        "EventDate": T0.isoformat()})  # not selected: stored, not written
    run(engine, feed)
    with Session(engine) as s:
        kinds = sorted((r.kind, r.code) for r in s.exec(select(WriteIntent)).all())
    assert kinds.count(("untag", "pURLOpened")) == 3
    assert kinds.count(("tag", "pURLOpened")) == 3
    assert kinds.count(("note", "pURLOpened")) == 3
    assert kinds.count(("tag", "Mailed")) == 1 and ("tag", "InTransit") not in kinds
    assert count(engine, MailEvent) == 5


def test_bad_events_are_quarantined_once_and_dry_run_writes_nothing(sqlite_url):
    engine = get_engine(sqlite_url)
    feed = Feed()
    feed.add(3)
    feed.events.append({"EventId": "bad", "Event": "Teleported", "DataId": 1,
                        "EventDate": T0.isoformat()})
    feed.events.append(["not", "an", "event"])
    dry = run(engine, feed, dry_run=True)
    assert dry.new_events == 3 and dry.quarantined == 2 and dry.planned > 0
    assert count(engine, MailEvent) == count(engine, WriteIntent) == 0
    run(engine, feed)
    run(engine, feed)
    assert count(engine, QuarantinedEvent) == 2
    with Session(engine) as s:
        reasons = sorted(q.reason for q in s.exec(select(QuarantinedEvent)).all())
    assert reasons == ["event is a list, not an object", "unknown event label 'Teleported'"]
