"""Incremental fetch over offset pages, newest first: nothing missed, nothing planned twice,
and one bad record never blocks another."""

from __future__ import annotations

import asyncio
import bisect
import json
import math
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, func, select

from mailsync.config import CampaignConfig
from mailsync.store.engine import get_engine
from mailsync.store.models import Campaign, MailEvent, QuarantinedEvent, WriteIntent
from mailsync.store.reasons import QuarantineReason
from mailsync.sync.fetch import fetch_campaign
from mailsync.sync.walker import Stop

T0 = datetime(2026, 11, 2, tzinfo=UTC)
CAMPAIGN = CampaignConfig(drop_id="7", location="loc", events=["Mailed", "pURLOpened"],
                          retrigger=["pURLOpened"])


class Crash(Exception):
    """The process dying mid-walk, as far as the store can tell."""


class Feed:
    """Postalytics' events endpoint in miniature: newest first, paged by offset.

    `cap` serves at most that many events per page whatever is asked; `served_offset` then
    starts page N at (N-1)*served rather than (N-1)*asked.
    """

    def __init__(self, cap: int | None = None, served_offset: bool = False) -> None:
        self.events: list[dict] = []  # oldest first
        self.requests: list[int] = []
        self.sizes: list[int] = []
        self.cap, self.served_offset = cap, served_offset
        self.between_pages = None

    def add(self, n: int, code: str = "Mailed", hours: float = 0.0,
            every: timedelta = timedelta(seconds=1)) -> None:
        for _ in range(n):
            i = len(self.events)
            self.events.append({"EventId": f"ev{i}", "Event": code, "DataId": i % 37,
                                "EventDate": (T0 + timedelta(hours=hours) + i * every
                                              ).isoformat()})

    def insert(self, event: dict) -> None:
        """An event arriving late: it takes its place by date, not at the top."""
        dates = [e["EventDate"] for e in self.events]
        self.events.insert(bisect.bisect(dates, event["EventDate"]), event)

    async def page(self, number: int, size: int) -> list[dict]:
        self.requests.append(number)
        self.sizes.append(size)
        newest_first = self.events[::-1]
        served = min(size, self.cap or size)
        start = (number - 1) * (served if self.served_offset else size)
        out = newest_first[start: start + served]
        if self.between_pages:
            self.between_pages(number)
        return out


def count(engine, model) -> int:
    with Session(engine) as s:
        return s.exec(select(func.count()).select_from(model)).one()


def rows(engine, model) -> list:
    with Session(engine) as s:
        return list(s.exec(select(model)).all())


def run(engine, feed, page_size: int = 10, **kw):
    return asyncio.run(fetch_campaign(engine, feed.page, CAMPAIGN, page_size=page_size, **kw))


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
    # Pages 1-4 hold the new and the recent events; page 4 is all stored and ends with events
    # older than the lookback, so the scan stops there (13 pages exist). No page repeated an
    # earlier one, so nothing arrived while paging: the top is not read again.
    assert feed.requests == [1, 2, 3, 4], feed.requests
    assert third.stopped is Stop.caught_up
    again = run(engine, feed)
    assert again.new_events == 0 and again.planned == 0


@pytest.mark.parametrize("dry_run", [False, True])
def test_events_arriving_while_paging_are_not_missed(sqlite_url, dry_run: bool):
    engine = get_engine(sqlite_url)
    feed = Feed()
    feed.add(60)
    arrivals = iter([3, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0])

    def arrive(_page: int) -> None:
        feed.add(next(arrivals, 0), hours=1)

    feed.between_pages = arrive
    result = run(engine, feed, dry_run=dry_run)
    feed.between_pages = None
    # Pushed down a page, events are read twice: each counted once, committed or not.
    assert result.new_events == len(feed.events) == 75
    assert feed.requests[-3:] == [1, 2, 3]  # the top, read again after the walk
    if dry_run:
        assert count(engine, MailEvent) == 0
        return
    assert result.planned == count(engine, WriteIntent)
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
    assert sorted(q.reason_code for q in rows(engine, QuarantinedEvent)) == [
        QuarantineReason.bad_event, QuarantineReason.unknown_code]


# -- pages shorter than asked ---------------------------------------------------------------

@pytest.mark.parametrize("served_offset", [False, True], ids=["offset-asked", "offset-served"])
def test_a_server_serving_fewer_events_than_asked_loses_none(sqlite_url, served_offset):
    """Issue 12 item 6: a server capping pages at 25 left 1,241 of 1,316 events unfetched."""
    engine = get_engine(sqlite_url)
    feed = Feed(cap=25, served_offset=served_offset)
    feed.add(1316)
    first = run(engine, feed, page_size=100)
    assert (first.new_events, count(engine, MailEvent)) == (1316, 1316)
    assert first.stopped is Stop.ended
    assert feed.sizes[:3] == [100, 25, 25] and len(feed.requests) == 53
    feed.add(40, hours=100)
    assert run(engine, feed, page_size=100).new_events == 40
    assert count(engine, MailEvent) == 1356


@pytest.mark.parametrize("first", [1316, 1300, 50])
def test_the_documented_server_costs_at_most_one_page_more_than_the_new_events_fill(
        sqlite_url, first):
    """PageSize 100 honoured: at most ⌈new / 100⌉ + 1 page requests per run, while the
    lookback holds fewer than a page of stored events (here one event a day, 72 h)."""
    engine = get_engine(sqlite_url)
    feed = Feed()
    for new in (first, 230, 300, 0, 5, 100):
        feed.add(new, every=timedelta(days=1))
        feed.requests.clear()
        result = run(engine, feed, page_size=100)
        assert result.new_events == new
        assert len(feed.requests) <= math.ceil(new / 100) + 1, (new, feed.requests)
    assert count(engine, MailEvent) == len(feed.events)


# -- the cursor and its lookback ------------------------------------------------------------

def test_a_crash_mid_walk_loses_nothing_even_when_the_new_events_span_the_lookback(sqlite_url):
    engine = get_engine(sqlite_url)
    feed = Feed()
    feed.add(50, every=timedelta(hours=1))
    run(engine, feed)
    # A quiet week: 60 new events six hours apart, far more than the 72 h lookback.
    feed.add(60, hours=24 * 7, every=timedelta(hours=6))

    def die(number: int) -> None:
        if number == 4:
            raise Crash

    feed.between_pages = die
    with pytest.raises(Crash):
        run(engine, feed)
    assert count(engine, MailEvent) == 80  # pages 1-3 were committed
    feed.between_pages = None
    run(engine, feed)
    assert count(engine, MailEvent) == 110


def test_a_late_backdated_event_within_the_lookback_is_fetched(sqlite_url):
    """Issue 12 item 9: an event arriving after a run, dated before the newest stored one but
    within the lookback, sits below the first page; the next run must still fetch it."""
    engine = get_engine(sqlite_url)
    feed = Feed()
    feed.add(60, every=timedelta(hours=1))
    run(engine, feed)
    newest = T0 + timedelta(hours=59)
    feed.insert({"EventId": "late", "Event": "Mailed", "DataId": 5,
                 "EventDate": (newest - timedelta(hours=25, minutes=30)).isoformat()})
    assert [e["EventId"] for e in feed.events[::-1]].index("late") >= 20  # page 3
    again = run(engine, feed)
    assert again.new_events == 1
    with Session(engine) as s:
        assert s.get(MailEvent, "e:7:late") is not None
        assert s.get(Campaign, "7").newest_event_at == newest


# -- one bad record never blocks another ----------------------------------------------------

def good_and(engine, feed: Feed, extra: dict) -> None:
    feed.add(30)
    feed.events.append({"EventDate": (T0 + timedelta(hours=1)).isoformat(), **extra})


def test_text_a_database_cannot_hold_is_cleaned_and_stored(db_url):
    engine = get_engine(db_url)
    feed = Feed()
    # Valid JSON: a lone surrogate and a NUL, in the names, the email and the visited URL.
    poison = json.loads('{"EventId": "p1", "Event": "pURL Opened", "DataId": 99, '
                        '"FirstName": "Ad\\ud800a", "LastName": "By\\u0000rne", '
                        '"Email": "ada\\u0000@example.com", '
                        '"Metadata": {"Url": "https://go.example.com/a\\ud800\\u0000b"}}')
    good_and(engine, feed, poison)
    result = run(engine, feed, page_size=100)
    assert (result.new_events, result.quarantined) == (31, 0)
    assert count(engine, MailEvent) == 31
    with Session(engine) as s:
        event = s.get(MailEvent, "e:7:p1")
        assert (event.first_name, event.last_name, event.email, event.url) == (
            "Ad\ufffda", "Byrne", "ada@example.com", "https://go.example.com/a\ufffdb")
        note = s.exec(select(WriteIntent).where(WriteIntent.intent_key == "note|e:7:p1")).one()
    assert "Visited: https://go.example.com/a\ufffdb" in note.body and "\x00" not in note.body


def refuse_first_name(engine, name: str) -> None:
    """Make the database itself refuse any event row with this first name."""
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON mail_events "
                f"WHEN NEW.first_name = '{name}' BEGIN SELECT RAISE(ABORT, 'refused'); END")
        else:
            conn.exec_driver_sql("ALTER TABLE mail_events ADD CONSTRAINT refuse "
                                 f"CHECK (first_name IS NULL OR first_name <> '{name}')")


def test_a_row_the_database_refuses_is_quarantined_alone(db_url):
    engine = get_engine(db_url)
    refuse_first_name(engine, "Refused")
    feed = Feed()
    bad = {"EventId": "r1", "Event": "Mailed", "DataId": 1000, "FirstName": "Refused"}
    good_and(engine, feed, bad)

    dry = run(engine, feed, page_size=100, dry_run=True)
    assert (dry.new_events, dry.quarantined) == (30, 1)
    # The savepoints of a dry run are rolled back with it, on SQLite too.
    assert count(engine, MailEvent) == count(engine, WriteIntent) == 0
    assert count(engine, QuarantinedEvent) == 0

    result = run(engine, feed, page_size=100)
    assert (result.new_events, result.quarantined) == (30, 1)
    assert count(engine, MailEvent) == 30
    intents = rows(engine, WriteIntent)
    assert result.planned == len(intents) > 0
    assert {i.event_key for i in intents if i.kind == "note"} == {
        f"e:7:ev{i}" for i in range(30)}
    [q] = rows(engine, QuarantinedEvent)
    assert q.reason_code == QuarantineReason.unstorable
    assert q.reason.startswith(("IntegrityError: refused", "CheckViolation: new row"))
    assert "INSERT" not in q.reason and "Refused" not in q.reason  # no statement, no values
    assert json.loads(q.payload)["EventId"] == "r1"

    again = run(engine, feed, page_size=100)
    assert (again.new_events, again.quarantined, again.planned) == (0, 0, 0)
    assert count(engine, QuarantinedEvent) == 1


def test_an_event_id_reused_with_other_content_is_quarantined_once(db_url):
    engine = get_engine(db_url)
    feed = Feed()
    feed.add(3)
    run(engine, feed)
    original = dict(feed.events[1])
    feed.events[1] = {**original, "Event": "In Transit", "DataId": 999}
    feed.events.append({**feed.events[0], "EventDate": (T0 + timedelta(days=2)).isoformat()})

    result = run(engine, feed)
    assert (result.new_events, result.quarantined, result.planned) == (0, 2, 0)
    reasons = {json.loads(q.payload)["EventId"]: q for q in rows(engine, QuarantinedEvent)}
    assert {q.reason_code for q in reasons.values()} == {QuarantineReason.id_reused}
    assert reasons["ev1"].reason == ("event e:7:ev1: code stored Mailed, served InTransit; "
                                     "recipient stored d:1, served d:999")
    assert reasons["ev0"].reason == ("event e:7:ev0: date stored 2026-11-02T00:00:00+00:00, "
                                     "served 2026-11-04T00:00:00+00:00")
    with Session(engine) as s:
        assert s.get(MailEvent, "e:7:ev1").code == "Mailed"  # the stored event stands

    assert run(engine, feed).quarantined == 0  # once, not every run
    feed.events[1] = original
    feed.events.pop()
    same = run(engine, feed)
    assert (same.new_events, same.quarantined, same.planned) == (0, 0, 0)
    assert count(engine, QuarantinedEvent) == 2 and count(engine, MailEvent) == 3


def test_an_id_served_twice_on_one_page_with_other_content_keeps_the_first(sqlite_url):
    engine = get_engine(sqlite_url)
    feed = Feed()
    feed.add(2)
    feed.events.append({**feed.events[0], "Event": "In Transit"})
    result = run(engine, feed)
    assert (result.new_events, result.quarantined) == (2, 1)
    with Session(engine) as s:
        assert s.get(MailEvent, "e:7:ev0").code == "InTransit"  # newest first: served first
    [q] = rows(engine, QuarantinedEvent)
    assert q.reason_code == QuarantineReason.id_reused and "served Mailed" in q.reason
