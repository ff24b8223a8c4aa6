"""The push path end to end over real HTTP: the sandbox delivers webhooks to the receiver,
which writes to the sandbox's HighLevel; the scheduled poll is the net."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlmodel import Session, col, or_, select

from mailsync.store.leases import acquire_lease, release_lease
from mailsync.store.models import EventSource, MailEvent, WriteIntent, WriteStatus
from mailsync.sync.normalise import RecipientKind, recipient_kind
from tests.webhook_helpers import webhook_rig

STEPS = 8
HOURS = 12


def stored_for(engine, drop_id: str, event_id: str) -> MailEvent | None:  # type: ignore[no-untyped-def]
    """The row of a Postalytics event, whichever channel stored it."""
    key = f"e:{drop_id}:{event_id}"
    with Session(engine) as s:
        return s.exec(select(MailEvent).where(
            or_(MailEvent.key == key, MailEvent.poll_key == key))).first()


@pytest.mark.slow
def test_duplicated_reordered_and_lost_webhooks_plus_the_poll_leave_highlevel_exact(
        tmp_path, db_url):
    with webhook_rig(tmp_path, db_url, seed=3, contacts=40) as w:
        w.sb.set_webhooks({d: w.url(d) for d in w.drops()}, duplicate_rate=0.2, reorder=True,
                          lost_rate=0.05, retry_delay=0.1, concurrency=4)
        for step in range(STEPS):
            w.sb.advance(HOURS)
            w.sb.wait_webhooks()
            w.wait_applied()
            if step % 3 == 2:
                w.rig.sync()  # the schedule, every third step
        w.rig.sync()
        end = w.rig.end()
        assert end.exact, end.describe()
        assert not end.duplicate_notes and end.expected_notes > 100

        view = w.sb.webhooks(log=True)
        counts = view["counts"]
        assert counts["duplicated"] > 10 and counts["lost"] > 3
        # Every event is one row: received by webhook unless its delivery was lost.
        engine = w.ctx.engine
        for d in view["log"]:
            row = stored_for(engine, d["drop_id"], d["event_id"])
            assert row is not None, d
            assert (row.received_at is None) == d["lost"], (d, row)
            if d["lost"]:
                assert row.source == EventSource.poll
        with Session(engine) as s:
            total = len(s.exec(select(MailEvent)).all())
        assert total == len(view["log"])


def test_writes_follow_the_webhooks_without_any_poll(tmp_path):
    with webhook_rig(tmp_path, seed=5, contacts=45) as w:
        w.sb.set_webhooks({d: w.url(d) for d in w.drops()})
        started = time.monotonic()
        w.sb.advance(30)
        w.sb.wait_webhooks()
        w.wait_applied()
        took = time.monotonic() - started
        assert w.sb.stats()["postalytics"]["total"]["requests"] == 0  # no poll ran
        engine = w.ctx.engine
        with Session(engine) as s:
            evs = s.exec(select(MailEvent)).all()
            rows = s.exec(select(WriteIntent)).all()
        waiting = [e for e in evs if recipient_kind(e.recipient_key) == RecipientKind.unidentified]
        known = [e for e in evs if e not in waiting]
        assert known and waiting  # carried ids are written; the rest wait for the poll
        by_event = {r.event_key: r for r in rows if r.kind == "note"}
        assert all(e.key not in by_event for e in waiting)
        notes = [by_event[e.key] for e in known if e.key in by_event]
        assert notes and all(n.status == WriteStatus.done for n in notes)
        assert took < 30
        # The poll names the waiting people: then everything is written, once.
        w.rig.sync()
        end = w.rig.end()
        assert end.exact, end.describe()


@pytest.mark.slow
def test_webhook_writes_wait_while_the_sync_holds_the_location(tmp_path):
    with webhook_rig(tmp_path, seed=5, contacts=45) as w:
        engine = w.ctx.engine
        location = w.settings.campaigns[0].location
        assert acquire_lease(engine, location, "sync-host:4242:cafe", timedelta(seconds=30))
        w.sb.set_webhooks({d: w.url(d) for d in w.drops()})
        w.sb.advance(30)
        w.sb.wait_webhooks()
        time.sleep(1.5)

        def open_notes() -> list[WriteIntent]:
            with Session(engine) as s:
                return list(s.exec(select(WriteIntent).where(
                    WriteIntent.location_id == location, WriteIntent.kind == "note",
                    col(WriteIntent.status) != WriteStatus.done)).all())

        held = open_notes()
        assert held and all(n.status == WriteStatus.pending for n in held)
        release_lease(engine, location, "sync-host:4242:cafe")
        deadline = time.monotonic() + 20
        while open_notes() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert open_notes() == []  # the receiver tried again once the lease was free
        w.wait_applied()
        w.rig.sync()
        assert w.rig.end().exact


@pytest.mark.slow
def test_webhooks_to_a_wrong_key_are_refused_and_the_poll_writes_every_event(tmp_path):
    with webhook_rig(tmp_path, seed=3, contacts=30) as w:
        wrong = {d: w.url(d, key="an-old-rotated-key-000") for d in w.drops()}
        w.sb.set_webhooks(wrong, retry_attempts=1, retry_delay=0.05)
        w.sb.advance(48)
        counts = w.sb.wait_webhooks()["counts"]
        assert counts["status_404"] == counts["attempts"] > 0 and counts["gave_up"] > 0
        with Session(w.ctx.engine) as s:
            assert s.exec(select(MailEvent)).first() is None
        w.rig.sync()
        assert w.rig.end().exact


@pytest.mark.slow
def test_namesakes_in_one_zip_each_get_their_own_writes(tmp_path):
    with webhook_rig(tmp_path, seed=5, contacts=45) as w:
        people = w.sb.sandbox.scenario.recipients
        drop = people[0].drop_id
        found = [p for p in people if p.drop_id == drop and p.match in ("email", "phone")]
        a, b = found[0], found[1]
        # Same name, same address: only their pieces (and the poll's DataId) tell them apart.
        b.first_name, b.last_name, b.address = a.first_name, a.last_name, dict(a.address)
        # And two namesakes elsewhere who carry their contact ids: the ids tell them apart.
        c, d = [p for p in people if p.drop_id == drop and p.match == "carried"][:2]
        d.first_name, d.last_name = c.first_name, c.last_name
        w.sb.set_webhooks({d: w.url(d) for d in w.drops()}, reorder=True)
        for step in range(6):
            w.sb.advance(12)
            w.sb.wait_webhooks()
            w.wait_applied()
            if step % 2 == 1:
                w.rig.sync()
        w.rig.sync()
        end = w.rig.end()
        assert end.exact, end.describe()
        assert not end.extra_notes and not end.extra_tags
