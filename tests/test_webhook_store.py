"""One row per event whichever channel brings it first, planned once, on both databases."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import command
from sqlmodel import Session, select

from mailsync.config import CampaignConfig
from mailsync.store.engine import _alembic_config, _engine, get_engine, normalise_url
from mailsync.store.models import (
    EventSource,
    MailEvent,
    QuarantinedEvent,
    WriteIntent,
    WriteStatus,
)
from mailsync.store.reasons import QuarantineReason
from mailsync.sync.fetch import fetch_campaign
from mailsync.sync.match import Arrival
from mailsync.sync.normalise import RecipientKind, normalise, recipient_kind
from mailsync.webhook.receive import Outcome, receive_event

T0 = datetime(2026, 11, 20, 14, 3, 7, tzinfo=UTC)
CAMPAIGN = CampaignConfig(drop_id="40211", location="loc", contact_id_field="var_field_1",
                          retrigger=["pURLOpened"])
ADA = {"DataId": 88123, "FirstName": "Ada", "LastName": "Byrne", "Email": "ada@example.com",
       "Address": {"Street": "1 Main St", "City": "Boston", "State": "MA", "Zip": "02110"},
       "carried": ""}


def rest(event_id: str, code: str, at: datetime, who: dict = ADA, url: str | None = None
         ) -> dict:
    return {"EventId": event_id, "Event": code, "EventDate": at.isoformat(),
            "DataId": who["DataId"], "FirstName": who["FirstName"],
            "LastName": who["LastName"], "Email": who["Email"], "Address": who["Address"],
            "VarFields": {"var_field_1": who["carried"]}, "Metadata": {"Url": url}}


def webhook(code_type: int, at: datetime, who: dict = ADA, attempt: int = 0,
            piece: str = "mp_1") -> dict:
    return {"mailId": piece, "eventDate": at.isoformat(), "expectedDeliveryDate": "",
            "eventType": code_type, "status": 0, "statusDescription": "",
            "retryAttempts": attempt,
            "To": {"name": f"{who['FirstName']} {who['LastName']}", "address": "1 Main St",
                   "city": "Boston", "state": "MA", "zip": who["Address"]["Zip"]},
            "meta": {"fields": {"var_field_1": who["carried"]}}}


def carried(contact_id: str) -> dict:
    return {**ADA, "carried": contact_id}


class Feed:
    """The events endpoint in miniature: newest first, offset pages."""

    def __init__(self) -> None:
        self.events: list[dict] = []  # oldest first

    async def page(self, number: int, size: int) -> list[dict]:
        newest = self.events[::-1]
        return newest[(number - 1) * size: number * size]


def poll(engine, feed: Feed):  # type: ignore[no-untyped-def]
    return asyncio.run(fetch_campaign(engine, feed.page, CAMPAIGN, page_size=10))


def push(engine, body: dict):  # type: ignore[no-untyped-def]
    return receive_event(engine, CAMPAIGN, body, datetime.now(UTC))


def events(engine) -> list[MailEvent]:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        return list(s.exec(select(MailEvent).order_by(MailEvent.event_at)).all())


def ledger(engine, kind: str | None = None) -> list[WriteIntent]:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        q = select(WriteIntent)
        if kind:
            q = q.where(WriteIntent.kind == kind)
        return list(s.exec(q).all())


def test_webhook_first_then_the_poll_is_one_event_planned_once(db_url):
    engine = get_engine(db_url)
    got = push(engine, webhook(6, T0, carried("hl_1")))
    assert (got.outcome, got.arrival, got.planned) == (Outcome.accepted, Arrival.stored, 2)
    for attempt in (1, 2):  # Postalytics retries, or sends it twice
        again = push(engine, webhook(6, T0, carried("hl_1"), attempt))
        assert (again.arrival, again.planned) == (Arrival.duplicate, 0)

    feed = Feed()
    feed.events.append(rest("ev1", "Processed for Delivery", T0, carried("hl_1")))
    first = poll(engine, feed)
    assert (first.new_events, first.webhook_first, first.planned) == (0, 1, 0)
    [row] = events(engine)
    assert (row.source, row.poll_key) == (EventSource.webhook, "e:40211:ev1")
    assert row.received_at is not None
    assert len(ledger(engine, "note")) == 1 and len(ledger(engine, "tag")) == 1
    # A later walk knows it by its REST key: the page is all stored, nothing is new.
    again = poll(engine, feed)
    assert (again.new_events, again.webhook_first, again.planned) == (0, 0, 0)


def test_poll_first_then_the_webhook_is_a_duplicate_that_records_its_arrival(db_url):
    engine = get_engine(db_url)
    feed = Feed()
    feed.events.append(rest("ev1", "Mailed", T0))
    assert poll(engine, feed).planned == 2
    late = push(engine, webhook(11, T0 + timedelta(milliseconds=250)))
    assert (late.outcome, late.arrival, late.planned) == (Outcome.accepted, Arrival.duplicate, 0)
    [row] = events(engine)
    assert row.source == EventSource.poll and row.received_at is not None
    assert len(ledger(engine)) == 2


def test_a_person_the_store_cannot_identify_waits_for_the_poll(db_url):
    engine = get_engine(db_url)
    visit = T0 + timedelta(days=3)
    got = push(engine, webhook(7, visit))  # no carried id; the webhook carries no email
    assert (got.arrival, got.planned) == (Arrival.awaiting_poll, 0)
    [row] = events(engine)
    assert recipient_kind(row.recipient_key) == RecipientKind.unidentified
    assert ledger(engine) == []

    feed = Feed()
    feed.events += [rest("ev1", "Mailed", T0),
                    rest("ev2", "pURL Opened", visit, url="https://purl.example/ada")]
    result = poll(engine, feed)
    assert (result.new_events, result.webhook_first) == (1, 1)
    rows = {e.key: e for e in events(engine)}
    waited = rows[row.key]
    assert (waited.recipient_key, waited.email) == ("d:88123", "ada@example.com")
    notes = ledger(engine, "note")
    assert len(notes) == 2 and {n.recipient_key for n in notes} == {"d:88123"}
    assert {n.event_key for n in notes} == {"e:40211:ev1", row.key}
    # Planned once the poll named the person, with what only the poll carries: the URL.
    [visit_note] = [n for n in notes if n.event_key == row.key]
    assert "Visited: https://purl.example/ada" in (visit_note.body or "")

    # From now on the person is known: their next webhook is written straight away, as the
    # same recipient (one set of tags and one contact link).
    nxt = push(engine, webhook(7, visit + timedelta(hours=5)))
    assert (nxt.arrival, nxt.planned) == (Arrival.stored, 3)  # untag, tag, note: a retrigger
    newest = events(engine)[-1]
    assert newest.recipient_key == "d:88123" and newest.key == nxt.event_key


def test_two_people_of_one_name_in_one_zip_are_never_taken_for_each_other(db_url):
    engine = get_engine(db_url)
    other = {**ADA, "DataId": 99001, "Email": "ada.other@example.com"}
    feed = Feed()
    feed.events.append(rest("a1", "Mailed", T0, ADA))
    poll(engine, feed)
    # The other Ada's webhook (her own piece) looks like Ada's by name and zip: it must not
    # be written to Ada's contact. Nothing else names her yet: she waits for the poll.
    later = T0 + timedelta(hours=1)
    got = push(engine, webhook(11, later, other, piece="mp_other"))
    assert (got.arrival, got.planned) == (Arrival.awaiting_poll, 0)
    feed.events.append(rest("b1", "Mailed", later, other))
    assert poll(engine, feed).webhook_first == 1
    rows = {e.key: e for e in events(engine)}
    assert rows[got.event_key].recipient_key == "d:99001"
    assert rows[got.event_key].email == "ada.other@example.com"
    notes = {n.event_key: n.recipient_key for n in ledger(engine, "note")}
    assert notes == {"e:40211:a1": "d:88123", got.event_key: "d:99001"}
    # Her next webhook is hers at once, by its piece; Ada's piece stays Ada's.
    again = push(engine, webhook(4, later + timedelta(hours=5), other, piece="mp_other"))
    assert again.arrival == Arrival.stored
    assert {e.key: e for e in events(engine)}[again.event_key].recipient_key == "d:99001"
    ada = push(engine, webhook(4, later + timedelta(hours=6), piece="mp_ada"))
    assert ada.arrival == Arrival.awaiting_poll  # a piece never seen: not Ada by her name


def test_namesakes_carrying_their_contact_ids_stay_two_recipients(db_url):
    from mailsync.sync.resolve import load_recipients

    engine = get_engine(db_url)
    seattle = {**carried("hl_seattle"), "Address": {**ADA["Address"], "Zip": "98101"}}
    one = push(engine, webhook(11, T0, carried("hl_boston"), piece="mp_b"))
    two = push(engine, webhook(11, T0 + timedelta(hours=1), seattle, piece="mp_s"))
    rows = {e.key: e for e in events(engine)}
    first, second = rows[one.event_key], rows[two.event_key]
    assert first.recipient_key != second.recipient_key
    who = load_recipients(engine, {("40211", first.recipient_key),
                                   ("40211", second.recipient_key)})
    assert who[("40211", first.recipient_key)].carried_contact_id == "hl_boston"
    assert who[("40211", second.recipient_key)].carried_contact_id == "hl_seattle"


def test_two_visits_in_one_second_are_two_events_whichever_came_first(db_url):
    engine = get_engine(db_url)
    visit = T0 + timedelta(days=3)
    who = carried("hl_2")
    feed = Feed()
    feed.events += [rest("v1", "pURL Opened", visit, who),
                    rest("v2", "pURL Opened", visit + timedelta(milliseconds=400), who)]
    assert push(engine, webhook(7, visit, who)).arrival == Arrival.stored
    # The second visit's webhook cannot be told from a redelivery of the first.
    assert push(engine, webhook(7, visit, who)).arrival == Arrival.duplicate
    result = poll(engine, feed)
    assert (result.new_events, result.webhook_first) == (1, 1)
    assert len(events(engine)) == 2 and len(ledger(engine, "note")) == 2
    assert poll(engine, feed).new_events == 0


def test_an_id_reused_with_other_content_is_caught_after_a_webhook_stored_it(db_url):
    engine = get_engine(db_url)
    who = carried("hl_3")
    push(engine, webhook(11, T0, who))
    feed = Feed()
    feed.events.append(rest("ev1", "Mailed", T0, who))
    poll(engine, feed)
    # Served again: the same event (no quarantine), then with another code.
    assert poll(engine, feed).quarantined == 0
    feed.events[0] = rest("ev1", "In Transit", T0, who)
    feed.events.append(rest("ev2", "Mailed", T0 + timedelta(hours=1), who))
    result = poll(engine, feed)
    assert (result.quarantined, result.new_events) == (1, 1)
    with Session(engine) as s:
        [q] = s.exec(select(QuarantinedEvent)).all()
    assert q.reason_code == QuarantineReason.id_reused and "code stored Mailed" in q.reason
    assert json.loads(q.payload)["EventId"] == "ev1"


def test_old_rows_get_their_match_key_where_their_fields_allow(db_url):
    url = normalise_url(db_url)
    cfg = _alembic_config(url)
    with _engine(url).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
    rows = [  # as the code before 0003 stored them: no zip
        ("e:40211:a", "Mailed", T0, "hl_9", "ada@example.com", "Ada"),
        ("e:40211:b", "Mailed", T0 + timedelta(milliseconds=300), "hl_9", None, "Ada"),
        ("e:40211:c", "InTransit", T0, None, "bo@example.com", None),
        ("e:40211:d", "InTransit", T0, None, "cy@example.com", "Cy"),
    ]
    with _engine(url).begin() as conn:
        for key, code, at, cid, email, first in rows:
            conn.execute(sa.text(
                "INSERT INTO mail_events (key, drop_id, recipient_key, code, event_at, "
                "carried_contact_id, email, first_name, fetched_at) VALUES (:k, '40211', "
                "'d:1', :c, :at, :cid, :e, :f, :at)"),
                {"k": key, "c": code, "at": at, "cid": cid, "e": email, "f": first})
    engine = get_engine(db_url)  # upgrades to head
    stored = {e.key: e for e in events(engine)}
    assert all(e.source == EventSource.poll and e.received_at is None for e in stored.values())
    # The carried id and the email (of a row without a name) give the key normalise gives.
    polled = normalise(rest("a", "Mailed", T0, carried("hl_9")), "40211", "var_field_1").event
    assert polled is not None and stored["e:40211:a"].match_key == polled.match_key
    no_name = {**ADA, "FirstName": None, "LastName": None, "Email": "bo@example.com"}
    polled_c = normalise(rest("c", "In Transit", T0, no_name), "40211").event
    assert polled_c is not None and stored["e:40211:c"].match_key == polled_c.match_key
    # The second visit in the same second keeps none; a name without a zip gives none.
    assert stored["e:40211:b"].match_key is None and stored["e:40211:d"].match_key is None
    # And a webhook for the carried person now finds the old row.
    assert push(engine, webhook(11, T0, carried("hl_9"))).arrival == Arrival.duplicate


def test_a_location_has_writes_waiting_until_they_are_sent(db_url):
    from mailsync.store import ledger as store_ledger
    from mailsync.store.reasons import Reason
    from mailsync.webhook.service import writes_waiting

    engine = get_engine(db_url)
    waiting = writes_waiting(engine)
    assert not waiting("loc")
    push(engine, webhook(11, T0, carried("hl_4")))
    assert waiting("loc") and not waiting("other-loc")
    ids = [r.id for r in ledger(engine)]
    store_ledger.mark(engine, ids, WriteStatus.pending, reason=Reason.daily_quota)
    assert not waiting("loc")  # deferred to tomorrow: no run can send them today
    store_ledger.mark(engine, ids, WriteStatus.done)
    assert not waiting("loc")
