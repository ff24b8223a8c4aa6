"""One event, two shapes: a webhook and the events endpoint name the same event alike.

The webhook shape here is the documented one (API-FACTS: mailId, eventDate, integer
eventType, the delivery's status/retryAttempts, a `To` section with name, address, city,
state and zip, `meta.fields` with the list's variable data), not the sandbox's.
"""

from __future__ import annotations

import copy

import pytest

from mailsync.store.models import EventSource
from mailsync.store.reasons import QuarantineReason
from mailsync.sync.normalise import (
    RecipientKind,
    name_form,
    normalise,
    recipient_kind,
    zip_form,
)

REST = {"EventId": "a1b2", "Event": "Processed for Delivery",
        "EventDate": "2026-11-20T14:03:07Z", "ExpectedDeliveryDate": "2026-11-21",
        "DataId": 88123, "FirstName": "Ada", "LastName": "Byrne", "Email": "ada@example.com",
        "Phone": "+15555550123",
        "Address": {"Street": "1 Main St", "City": "Boston", "State": "MA", "Zip": "02110"},
        "VarFields": {"var_field_1": "", "var_field_10": "OFFER-123"},
        "Metadata": {"Url": None}}
WEBHOOK = {"mailId": "mp_77a", "eventDate": "2026-11-20T14:03:07.412Z",
           "expectedDeliveryDate": "2026-11-21", "eventType": 6, "status": 500,
           "statusDescription": "Internal Server Error", "retryAttempts": 2,
           "To": {"name": "ADA  BYRNE", "address": "1 Main St", "city": "Boston", "state": "MA",
                  "zip": "02110-4411", "errorCodes": [], "addressUpdate": None},
           "meta": {"fields": {"var_field_1": "", "var_field_10": "OFFER-123"}}}


def rest(**changes: object) -> dict:
    out = copy.deepcopy(REST)
    out.update(changes)
    return out


def hook(**changes: object) -> dict:
    out = copy.deepcopy(WEBHOOK)
    out.update(changes)
    return out


def event(raw: object, source: EventSource = EventSource.poll, field: str | None = None):  # type: ignore[no-untyped-def]
    n = normalise(raw, "40211", field, source=source)
    assert n.event is not None, n.quarantine and n.quarantine.reason
    return n.event


def test_the_same_event_by_webhook_and_by_the_events_endpoint_has_one_match_key():
    polled, pushed = event(REST), event(WEBHOOK, EventSource.webhook)
    assert polled.match_key and polled.match_key == pushed.match_key
    assert polled.person_key == pushed.person_key
    assert (polled.code, pushed.code) == ("ProcessedForDelivery", "ProcessedForDelivery")
    # Each keeps the key its channel can give: REST its event id, the webhook its match key.
    assert polled.key == "e:40211:a1b2" and pushed.key == "w:" + pushed.match_key
    assert recipient_kind(polled.recipient_key) == RecipientKind.data_id
    assert pushed.source == EventSource.webhook and pushed.zip == "02110-4411"
    # The webhook's full name is split for HighLevel (first and last name).
    assert (pushed.first_name, pushed.last_name) == ("ADA", "BYRNE")


def test_the_carried_contact_id_names_the_person_when_there_is_one():
    carried = {"var_field_1": "hl_contact_9", "var_field_10": "OFFER-123"}
    polled = event(rest(VarFields=carried, LastName="Byrne-Smith"), field="var_field_1")
    pushed = event(hook(meta={"fields": carried}), EventSource.webhook, field="var_field_1")
    # The names differ here; the carried id decides.
    assert polled.match_key == pushed.match_key
    assert pushed.carried_contact_id == "hl_contact_9"


@pytest.mark.parametrize("changed", [
    {"eventType": 5},                                   # another code
    {"eventDate": "2026-11-20T14:03:08Z"},               # another second
    {"To": {**WEBHOOK["To"], "name": "Grace Byrne"}},    # another person
    {"To": {**WEBHOOK["To"], "zip": "02111"}},           # same name, another zip
])
def test_another_code_second_or_person_is_another_event(changed: dict):
    assert event(hook(**changed), EventSource.webhook).match_key != event(REST).match_key


def test_names_and_zips_are_compared_in_one_form():
    assert name_form("Ada", "Byrne") == name_form("ada byrne") == name_form("Adá  BYRNE")
    assert zip_form("02110-4411") == zip_form("02110") == "02110"
    assert zip_form("m5v 2t6") == "M5V2T6"
    assert zip_form("") is None and zip_form("1") is None


def test_email_names_the_person_only_without_a_name_and_zip():
    no_zip = rest(Address={"Street": "1 Main St"})
    no_zip_hook = hook(To={"name": "Ada Byrne"},
                       meta={"fields": {"email": "ADA@example.com"}})
    assert event(no_zip).match_key == event(no_zip_hook, EventSource.webhook).match_key
    assert event(no_zip_hook, EventSource.webhook).email == "ADA@example.com"


def test_a_webhook_nothing_could_match_is_quarantined_with_the_reason():
    n = normalise(hook(To={"name": "Ada Byrne", "address": "1 Main St"}), "40211",
                  source=EventSource.webhook)
    assert n.event is None and n.quarantine is not None
    assert n.quarantine.reason_code == QuarantineReason.bad_event
    assert "nothing to match it" in n.quarantine.reason
    # A REST event without a person still has its id: stored, just never matched.
    assert event(rest(FirstName=None, LastName=None, Address={}, Email=None)).match_key is None


def test_a_retried_delivery_is_the_same_payload_and_status_is_never_the_label():
    first = normalise(hook(eventType=42, retryAttempts=0, status=0), "40211",
                      source=EventSource.webhook)
    again = normalise(hook(eventType=42, retryAttempts=3, status=500), "40211",
                      source=EventSource.webhook)
    assert first.quarantine is not None and again.quarantine is not None
    assert first.quarantine.fingerprint == again.quarantine.fingerprint
    assert first.quarantine.reason_code == QuarantineReason.unknown_code
    # Without eventType, the delivery's HTTP status must not be read as a code.
    missing = {k: v for k, v in WEBHOOK.items() if k != "eventType"}
    out = normalise(missing, "40211", source=EventSource.webhook)
    assert out.quarantine is not None and "missing event label" in out.quarantine.reason


def test_an_empty_expected_delivery_date_is_none():
    assert event(hook(expectedDeliveryDate=""), EventSource.webhook).expected_delivery is None
