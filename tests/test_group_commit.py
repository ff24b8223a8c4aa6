"""The fetch commits its pages in groups, shared by the campaigns fetched at once: nothing
lost, nothing claimed that was not stored, one campaign's failure never another's, and the
store free to other writers while the fetch waits for Postalytics."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, func, select

from mailsync.config import CampaignConfig
from mailsync.store import group_commit
from mailsync.store.engine import get_engine, sqlite_path
from mailsync.store.models import MailEvent, WriteIntent
from mailsync.sync import fetch
from mailsync.sync.fetch import fetch_campaign

T0 = datetime(2026, 11, 2, tzinfo=UTC)
CAMPAIGNS = [CampaignConfig(drop_id=d, location="loc", events=["Mailed"]) for d in ("7", "8")]
EVENTS = 35  # per campaign: 4 pages of 10


class Feed:
    """One campaign's events endpoint, newest first; each page takes a turn of the loop, as
    an HTTP request does, so campaigns fetched at once interleave their pages."""

    def __init__(self, drop_id: str, wait: dict[int, float] | None = None) -> None:
        self.events = [{"EventId": f"{drop_id}-{i}", "Event": "Mailed", "DataId": i,
                        "EventDate": (T0 + timedelta(minutes=i)).isoformat()}
                       for i in range(EVENTS)][::-1]
        self.wait = wait or {}
        self.during: dict[int, object] = {}

    async def page(self, number: int, size: int) -> list[dict]:
        await asyncio.sleep(self.wait.get(number, 0))
        if number in self.during:
            self.during[number]()  # type: ignore[operator]
        return self.events[(number - 1) * size: number * size]


def fetch_both(engine, feeds: list[Feed], dry_run: bool = False) -> list:  # type: ignore[no-untyped-def]
    async def both() -> list:
        return await asyncio.gather(*(
            fetch_campaign(engine, f.page, c, page_size=10, dry_run=dry_run)
            for c, f in zip(CAMPAIGNS, feeds, strict=True)), return_exceptions=True)
    return asyncio.run(both())


def stored(engine, drop_id: str | None = None) -> int:  # type: ignore[no-untyped-def]
    q = select(func.count()).select_from(MailEvent)
    if drop_id is not None:
        q = q.where(MailEvent.drop_id == drop_id)
    with Session(engine) as s:
        return s.exec(q).one()


def planned(engine) -> int:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        return s.exec(select(func.count()).select_from(WriteIntent)).one()


def test_campaigns_fetched_on_one_loop_both_finish(db_url):
    """Each holding a SQLite transaction of its own across its waits, the second would wait
    for the first's lock with the loop blocked, and fail after the busy timeout."""
    engine = get_engine(db_url)
    results = fetch_both(engine, [Feed("7"), Feed("8")])
    assert [r.new_events for r in results] == [EVENTS, EVENTS]
    assert stored(engine) == 2 * EVENTS
    assert planned(engine) == sum(r.planned for r in results) > 0


def test_campaigns_fetched_in_threads_store_their_pages_side_by_side(db_url):
    """As a Prefect worker fetches them (a thread and a loop each): no campaign waits for
    another's whole walk, as it would if each held the store across its wait for
    Postalytics."""
    engine = get_engine(db_url)
    order: list[str] = []
    results: dict[str, object] = {}

    def one(campaign: CampaignConfig) -> None:
        feed = Feed(campaign.drop_id, wait=dict.fromkeys(range(1, 6), 0.05))
        results[campaign.drop_id] = asyncio.run(fetch_campaign(
            engine, feed.page, campaign, page_size=10,
            on_page=lambda r: order.append(r.drop_id)))

    threads = [threading.Thread(target=one, args=(c,)) for c in CAMPAIGNS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[c.drop_id].new_events for c in CAMPAIGNS] == [EVENTS, EVENTS]
    assert stored(engine) == 2 * EVENTS
    # Each campaign stored 5 pages (the last one empty); the other's came in between.
    runs = [k for k, _ in itertools.groupby(order)]
    assert len(runs) > 3, order


def test_the_store_is_free_to_other_writers_while_the_fetch_waits(sqlite_url, monkeypatch):
    """A webhook receiver or another sync on the same SQLite file gets the write lock within
    `COMMIT_SECONDS` while the fetch awaits a slow page, and sees the pages before it."""
    monkeypatch.setattr(group_commit, "COMMIT_SECONDS", 0.05)
    engine = get_engine(sqlite_url)
    feed = Feed("7", wait={3: 0.5})
    seen: list[int] = []

    def another_writer() -> None:
        # No busy timeout: it fails at once if the fetch still held the lock.
        other = sqlite3.connect(str(sqlite_path(sqlite_url)), timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")
            seen.append(other.execute("SELECT count(*) FROM mail_events").fetchone()[0])
            other.rollback()
        finally:
            other.close()

    feed.during[3] = another_writer
    result = asyncio.run(fetch_campaign(engine, feed.page, CAMPAIGNS[0], page_size=10))
    assert seen == [20]  # pages 1 and 2, committed by the timer while page 3 was awaited
    assert result.new_events == stored(engine) == EVENTS


class _FailingCommit(Session):
    """The shared session, with its first commit failing as a full disk would fail it."""

    failures = 1

    def commit(self) -> None:
        if _FailingCommit.failures:
            _FailingCommit.failures -= 1
            raise OperationalError("COMMIT", {}, sqlite3.OperationalError("disk I/O error"))
        super().commit()


def test_a_failed_commit_fails_every_campaign_in_it_and_the_next_run_stores_all(
        db_url, monkeypatch):
    monkeypatch.setattr(group_commit, "COMMIT_PAGES", 4)
    monkeypatch.setattr(group_commit, "COMMIT_SECONDS", 60.0)
    monkeypatch.setattr(group_commit, "Session", _FailingCommit)
    _FailingCommit.failures = 1
    engine = get_engine(db_url)
    results = fetch_both(engine, [Feed("7"), Feed("8")])
    # Both had pages in the commit that failed: neither reports them stored.
    assert all(isinstance(r, OperationalError) for r in results), results
    assert "disk I/O error" in str(results[0]) and stored(engine) == 0
    again = fetch_both(engine, [Feed("7"), Feed("8")])
    assert [r.new_events for r in again] == [EVENTS, EVENTS]
    assert stored(engine) == 2 * EVENTS and planned(engine) == sum(r.planned for r in again)


def test_a_page_that_fails_is_rolled_back_alone(db_url, monkeypatch):
    """Campaign 7's third page fails after its events were inserted: that page alone is
    undone, campaign 8 in the same transaction finishes, and 7's first pages stay stored."""
    engine = get_engine(db_url)
    real = fetch._identify_waiting
    calls = {"7": 0}

    def identify_waiting(session, scope, polled):  # type: ignore[no-untyped-def]
        if scope.campaign.drop_id == "7":
            calls["7"] += 1
            if calls["7"] == 3:
                raise RuntimeError("a bug on page 3")
        return real(session, scope, polled)

    monkeypatch.setattr(fetch, "_identify_waiting", identify_waiting)
    first = fetch_both(engine, [Feed("7"), Feed("8")])
    assert isinstance(first[0], RuntimeError) and first[1].new_events == EVENTS
    assert (stored(engine, "7"), stored(engine, "8")) == (20, EVENTS)
    monkeypatch.setattr(fetch, "_identify_waiting", real)
    again = fetch_both(engine, [Feed("7"), Feed("8")])
    assert [r.new_events for r in again] == [EVENTS - 20, 0]
    assert stored(engine) == 2 * EVENTS


@pytest.mark.parametrize("dry_run", [False, True])
def test_the_last_campaign_out_leaves_no_transaction_open(sqlite_url, dry_run):
    """After a fetch, nothing holds the store: the next writer gets it at once."""
    engine = get_engine(sqlite_url)
    results = fetch_both(engine, [Feed("7"), Feed("8")], dry_run=dry_run)
    assert [r.new_events for r in results] == [EVENTS, EVENTS]
    other = sqlite3.connect(str(sqlite_path(sqlite_url)), timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")  # fails at once if a transaction were left open
        other.rollback()
    finally:
        other.close()
    assert stored(engine) == (0 if dry_run else 2 * EVENTS)
