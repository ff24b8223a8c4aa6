"""Normalising raw events: every known key spelling works; bad input is quarantined, never lost."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsync.store.models import MailEvent
from mailsync.store.reasons import QuarantineReason
from mailsync.sync.normalise import clean_text, match_key, normalise, short_hash

GOOD = {"EventId": "a1b2", "Event": "Processed for Delivery",
        "EventDate": "2026-11-20T14:03:00Z", "ExpectedDeliveryDate": "2026-11-21",
        "DataId": 88123, "FirstName": "Ada", "LastName": "Byrne", "Email": "ada@example.com",
        "Phone": "+15555550123",
        "Address": {"Street": "1 Main St", "City": "Boston", "State": "MA", "Zip": "02110"},
        "VarFields": {"var_field_1": "hl_contact_1"}, "Metadata": {"Url": None}}


def test_working_shape_becomes_a_mail_event():
    n = normalise(GOOD, "100", "var_field_1", run_id="r1")
    e = n.event
    assert e is not None and n.quarantine is None
    assert (e.key, e.code, e.recipient_key) == ("e:100:a1b2", "ProcessedForDelivery", "d:88123")
    assert e.event_at == datetime(2026, 11, 20, 14, 3, tzinfo=UTC)
    assert (e.email, e.carried_contact_id, e.expected_delivery) == (
        "ada@example.com", "hl_contact_1", "2026-11-21")


def test_camel_and_snake_case_and_webhook_integers_mean_the_same_event():
    camel = {"eventId": "a1b2", "eventType": 6, "eventDate": "2026-11-20T14:03:00+00:00",
             "dataId": "88123", "email": "ada@example.com",
             "varFields": {"varField1": "hl_contact_1"}}
    snake = {"event_id": "a1b2", "event": "processed  FOR delivery",
             "event_date": "2026-11-20 14:03:00", "data_id": 88123,
             "var_fields": {"var_field_1": "hl_contact_1"}}
    keys = {normalise(raw, "100", "var_field_1").event.key for raw in (GOOD, camel, snake)}
    assert keys == {"e:100:a1b2"}
    assert normalise(camel, "100", "var_field_1").event.carried_contact_id == "hl_contact_1"


def test_webhook_to_section_and_meta_url_are_read():
    hook = {"mailId": "m9", "eventType": 7, "eventDate": "2026-11-20T14:03:00Z",
            "To": {"FirstName": "Ada", "Email": "ada@example.com"},
            "meta": {"url": "https://go.example.com/ada"}}
    e = normalise(hook, "100").event
    assert e is not None and e.code == "pURLOpened" and e.url == "https://go.example.com/ada"
    assert e.key.startswith("h:") and e.recipient_key.startswith("h:")


def test_without_an_id_the_key_is_deterministic_and_distinguishes_visits():
    visit = {"Event": "pURL Opened", "EventDate": "2026-11-20T14:03:00Z", "DataId": 1,
             "Metadata": {"Url": "https://go.example.com/a"}}
    later = dict(visit, EventDate="2026-11-21T09:00:00Z")
    assert normalise(visit, "100").key == normalise(dict(visit), "100").key
    assert normalise(visit, "100").key != normalise(later, "100").key
    assert normalise(visit, "100").key != normalise(visit, "101").key


@pytest.mark.parametrize(("raw", "reason"), [
    ({**GOOD, "EventDate": None}, "missing event date"),
    ({**GOOD, "EventDate": "yesterday"}, "not an ISO 8601 date"),
    ({**GOOD, "Event": "Delivered"}, "unknown event label 'Delivered'"),
    ({k: v for k, v in GOOD.items() if k != "Event"}, "missing event label"),
    ({**GOOD, "Email": ["a@b"]}, "email has the wrong type"),
    ({**GOOD, "FirstName": "A" * 5000}, "first_name is 5000 characters long"),
    ({"Event": "Mailed", "EventDate": "2026-11-20T14:03:00Z"}, "no recipient"),
    ("not an object", "event is a str"),
    (None, "event is a NoneType"),
])
def test_bad_events_are_quarantined_with_their_reason(raw: object, reason: str):
    n = normalise(raw, "100", run_id="r1")
    assert n.event is None and n.quarantine is not None
    assert reason in n.quarantine.reason
    assert n.quarantine.drop_id == "100"
    assert json.loads(n.quarantine.payload) == raw
    assert n.quarantine.fingerprint == normalise(raw, "100").quarantine.fingerprint
    expected = (QuarantineReason.unknown_code if "unknown event label" in reason
                else QuarantineReason.bad_event)
    assert n.quarantine.reason_code == expected


def test_clean_text_drops_control_characters_and_replaces_lone_surrogates():
    assert clean_text("Ada Byrne\tof\nBoston") == "Ada Byrne\tof\nBoston"  # untouched
    assert clean_text("By\x00r\x07n\x1be\r") == "Byrne"
    assert clean_text("Ad\ud800a \udfff") == "Ad\ufffda \ufffd"
    assert clean_text("caf\u00e9 \U0001f600") == "caf\u00e9 \U0001f600"  # real text stays


TEXT_FIELDS = ("key", "recipient_key", "code", "expected_delivery", "url", "first_name",
               "last_name", "email", "phone", "carried_contact_id")


def assert_storable(text: str | None) -> None:
    """Text both PostgreSQL and the drivers take: encodable UTF-8, no NUL."""
    if text is not None:
        text.encode("utf-8")
        assert "\x00" not in text


def test_text_a_database_cannot_hold_is_cleaned_in_every_field():
    # Valid JSON, as Postalytics could send it: lone surrogates and NULs everywhere.
    raw = json.loads(json.dumps({
        **GOOD, "EventId": "a1\u0000b2", "Event": "Processed for Delivery\u0000",
        "ExpectedDeliveryDate": "2026-11-21\u0000", "DataId": "88\ud800123",
        "FirstName": "Ad\ud800a", "LastName": "By\u0000rne", "Email": "ada\u0000@example.com",
        "Phone": "+1555\u00005550123", "VarFields": {"var_field_1": "hl\udc00_1"},
        "Metadata": {"Url": "https://go.example.com/\ud800\u0000a"}}))
    e = normalise(raw, "100", "var_field_1").event
    assert e is not None
    for name in TEXT_FIELDS:
        assert_storable(getattr(e, name))
    assert (e.key, e.code, e.recipient_key) == ("e:100:a1b2", "ProcessedForDelivery",
                                                "d:88\ufffd123")
    assert (e.first_name, e.last_name, e.email, e.phone) == (
        "Ad\ufffda", "Byrne", "ada@example.com", "+15555550123")
    assert (e.expected_delivery, e.carried_contact_id, e.url) == (
        "2026-11-21", "hl\ufffd_1", "https://go.example.com/\ufffda")


def test_a_quarantined_payload_is_storable_and_gives_back_the_raw_event():
    raw = {**GOOD, "Event": "Tele\ud800port\u0000ed"}
    q = normalise(raw, "100").quarantine
    assert q is not None and q.reason_code == QuarantineReason.unknown_code
    assert q.payload.isascii() and json.loads(q.payload) == raw
    assert_storable(q.reason)


# Any text JSON can carry, lone surrogates and control characters included.
any_text = st.text(st.characters(codec=None, categories=["Cs", "Cc", "L", "N", "P", "Z"]),
                   max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12),
                                                                      children, max_size=6),
    max_leaves=20)
field_names = st.sampled_from(["EventId", "Event", "eventType", "EventDate", "event_date",
                               "DataId", "Email", "Phone", "VarFields", "Metadata", "To",
                               "FirstName", "ExpectedDeliveryDate"])


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(field_names, json_values, max_size=10) | json_values)
def test_fuzz_any_input_is_an_event_or_quarantined_never_a_crash(raw: object):
    n = normalise(raw, "100", "var_field_1")
    assert (n.event is None) != (n.quarantine is None)
    if n.quarantine is not None:
        assert n.quarantine.reason and n.quarantine.reason_code in set(QuarantineReason)
        assert len(n.quarantine.fingerprint) <= 80
        assert n.quarantine.payload.isascii()
        assert_storable(n.quarantine.reason)
    else:
        assert n.event.event_at.tzinfo is not None
        assert len(n.event.key) <= 80
        for name in TEXT_FIELDS:
            value = getattr(n.event, name)
            assert_storable(value)
            limit = getattr(MailEvent.__table__.c[name].type, "length", None)
            assert limit is None or value is None or len(value) <= limit


@pytest.mark.parametrize(("at", "digest"), [
    (datetime(2026, 11, 20, 14, 3, 7, 250000, tzinfo=UTC),
     "01d2d4436682dbb83f6dbca50f5be0df801cc3ae"),
    (datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC), "a70c3cf6da90098cd416b9336687776f7f578837"),
])
def test_match_keys_stay_what_earlier_versions_stored(at: datetime, digest: str):
    """A stored event is found again by its match key: the key of the same event must not
    change between versions (these digests are what earlier versions wrote)."""
    assert match_key("40211", "Mailed", at, "p1") == digest


def test_a_short_hash_of_parts_that_are_not_all_text_stays_what_it_was():
    """None is an empty part and a number its text, as before text parts were joined
    directly."""
    assert short_hash("a", None, 3, "b") == "a58d3471560d3307e0bf063471cbf7c3"
