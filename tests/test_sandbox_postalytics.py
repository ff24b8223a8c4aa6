"""The sandbox's Postalytics API over real HTTP: Basic auth, 3 req/s, offset paging, shapes."""

# Fixtures are imported by name (conftest does not load them), so test arguments
# "redefine" the imported names: that is how pytest fixtures work.

from __future__ import annotations

import time

import httpx
import pytest

from mailsync.codes import CA_CODES, EventCode, UnknownEventLabel, parse_code
from mailsync.sandbox.postalytics_api import CapOffset
from mailsync.sandbox.server import SandboxServer
from tests.sandbox_fixtures import pl_client

INVALID = {"error": {"message": "Invalid API key. User authentication failed", "status_code": 401}}


def _paced(client: httpx.Client, url: str, **kw: object) -> httpx.Response:
    """GET, waiting out the 3 requests/s window rather than failing on it."""
    for _ in range(50):
        resp = client.get(url, **kw)  # type: ignore[arg-type]
        if resp.status_code != 429:
            return resp
        time.sleep(0.2)
    raise AssertionError("still rate limited")


def test_bad_or_missing_key_is_401_with_exact_body(sandbox: SandboxServer) -> None:
    with pl_client(sandbox, key="wrong") as c:
        resp = c.get("/campaigns")
    assert resp.status_code == 401 and resp.json() == INVALID
    no_auth = httpx.get(sandbox.postalytics_url + "/campaigns")
    assert no_auth.status_code == 401 and no_auth.json() == INVALID


def test_three_requests_per_second_then_429(sandbox: SandboxServer) -> None:
    with pl_client(sandbox) as c:
        statuses = [c.get("/campaigns").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        time.sleep(1.05)
        assert c.get("/campaigns").status_code == 200
    stats = sandbox.stats()["postalytics"]["total"]
    assert stats["rate_limited"] == 1


def test_campaigns_and_details(sandbox: SandboxServer) -> None:
    manifest = sandbox.manifest()
    with pl_client(sandbox) as c:
        camps = c.get("/campaigns").json()
        assert {str(x["drop_id"]) for x in camps} == {m["drop_id"] for m in manifest["campaigns"]}
        assert all({"drop_id", "name", "endpoint"} <= set(x) for x in camps)
        drop = manifest["campaigns"][0]["drop_id"]
        details = c.get(f"/campaigns/{drop}/details").json()
        assert str(details["DirectMailDropId"]) == drop
        assert {"ContactListId", "DirectMailName", "EndPointId", "Status"} <= set(details)
        assert c.get("/campaigns/1/details").status_code == 404


def test_events_newest_first_and_pages_shift_under_new_events(sandbox: SandboxServer) -> None:
    drop = sandbox.manifest()["campaigns"][0]["drop_id"]
    sandbox.advance(30)
    with pl_client(sandbox) as c:
        page1 = _paced(c, f"/campaigns/{drop}/events", params={"PageNumber": 1, "PageSize": 5})
        assert page1.status_code == 200
        events = page1.json()
        dates = [e["EventDate"] for e in events]
        assert len(events) == 5 and dates == sorted(dates, reverse=True)
        added = sandbox.advance(6)["emitted"]
        truth = sandbox.truth(drop)["campaigns"][0]["events"]
        new_here = sum(1 for e in truth if e["event_date"] > dates[0])
        assert added > 0 and new_here > 0
        # Offset paging over a live list: the old page 1 now starts `new_here` items later.
        window = _paced(c, f"/campaigns/{drop}/events",
                        params={"PageNumber": 1, "PageSize": 5 + new_here}).json()
        assert [e["EventId"] for e in window[new_here:]] == [e["EventId"] for e in events]
        page2 = _paced(c, f"/campaigns/{drop}/events", params={"PageNumber": 2, "PageSize": 5})
        ids2 = [e["EventId"] for e in page2.json()]
        overlap = set(ids2) & {e["EventId"] for e in events}
        assert overlap, "events from the first page reappear on page 2 after new arrivals"
        too_big = _paced(c, f"/campaigns/{drop}/events", params={"PageSize": 101})
        assert too_big.status_code == 400
        beyond = _paced(c, f"/campaigns/{drop}/events", params={"PageNumber": 999})
        assert beyond.status_code == 200 and beyond.json() == []


def test_event_shape_and_truth_agree(sandbox: SandboxServer) -> None:
    sandbox.advance(24 * 12)
    truth = sandbox.truth()
    recipients = {r["data_id"]: r for r in sandbox.recipients()}
    with pl_client(sandbox) as c:
        for camp in truth["campaigns"]:
            served = []
            page = 1
            while True:
                batch = _paced(c, f"/campaigns/{camp['drop_id']}/events",
                               params={"PageNumber": page, "PageSize": 100}).json()
                served += batch
                if len(batch) < 100:
                    break
                page += 1
            assert [e["EventId"] for e in reversed(served)] == [
                e["event_id"] for e in camp["events"]]
            for raw, true in zip(reversed(served), camp["events"], strict=True):
                assert set(raw) == {"EventId", "Event", "EventDate", "ExpectedDeliveryDate",
                                    "DataId", "FirstName", "LastName", "Email", "Phone",
                                    "Address", "VarFields", "Metadata"}
                assert parse_code(raw["Event"]).value == true["code"]
                assert raw["EventDate"] == true["event_date"]
                assert raw["Metadata"]["Url"] == true["url"]
                assert (raw["Metadata"]["Url"] is not None) == (
                    true["code"] in ("pURLOpened", "pURLCompleted"))
                rec = recipients[raw["DataId"]]
                carried = raw["VarFields"][camp["contact_id_field"]]
                assert carried == (rec["hl_contact_id"] if rec["match"] == "carried" else "")
            if camp["country"] == "CA":
                assert {EventCode(e["code"]) for e in camp["events"]} <= CA_CODES
    codes = {e["code"] for camp in truth["campaigns"] for e in camp["events"]}
    assert {"Mailed", "ProcessedForDelivery", "pURLOpened"} <= codes


def test_one_recipients_events(sandbox: SandboxServer) -> None:
    sandbox.advance(24 * 6)
    camp = sandbox.truth()["campaigns"][0]
    data_id = camp["events"][0]["data_id"]
    mine = [e["event_id"] for e in camp["events"] if e["data_id"] == data_id]
    with pl_client(sandbox) as c:
        served = c.get(f"/campaigns/{camp['drop_id']}/events/{data_id}").json()
    assert [e["EventId"] for e in served] == list(reversed(mine))


def test_messy_mixes_shapes_and_flags_malformed(messy_sandbox: SandboxServer) -> None:
    messy_sandbox.advance(24 * 8)
    camp = messy_sandbox.truth()["campaigns"][0]
    flagged = {e["event_id"]: e["malformed_reason"] for e in camp["events"] if e["malformed"]}
    assert flagged, "some events are served malformed on purpose"
    served = []
    with pl_client(messy_sandbox) as c:
        for page in range(1, 4):
            served += _paced(c, f"/campaigns/{camp['drop_id']}/events",
                             params={"PageNumber": page, "PageSize": 100}).json()
    keys = {k for e in served for k in e}
    assert {"EventId", "eventId", "event_id"} <= keys
    labels = [e.get("Event", e.get("event")) for e in served]
    assert any(isinstance(x, int) and not isinstance(x, bool) for x in labels)
    by_id = {e.get("EventId") or e.get("eventId") or e.get("event_id"): e for e in served}
    checked = 0
    for event_id, reason in flagged.items():
        raw = by_id.get(event_id)
        if raw is None:
            continue
        checked += 1
        label = raw.get("Event", raw.get("event"))
        if reason == "unknown_label":
            with pytest.raises(UnknownEventLabel):
                parse_code(label)
        elif reason == "missing_date":
            assert not ({"EventDate", "eventDate", "event_date"} & set(raw))
        elif reason == "wrong_types":
            assert isinstance(label, list)
        elif reason == "absurd_length":
            assert len(str(raw)) > 10_000
    assert checked > 0
    # Everything not flagged still parses to its true code.
    truth = {e["event_id"]: e["code"] for e in camp["events"]}
    for event_id, raw in by_id.items():
        if event_id not in flagged:
            assert parse_code(raw.get("Event", raw.get("event"))).value == truth[event_id]


@pytest.mark.parametrize("cap_offset", list(CapOffset))
def test_a_page_cap_serves_fewer_than_asked_from_either_offset(sandbox: SandboxServer,
                                                               cap_offset: CapOffset) -> None:
    drop = sandbox.manifest()["campaigns"][0]["drop_id"]
    sandbox.advance(24 * 6)
    with pl_client(sandbox) as c:
        url = f"/campaigns/{drop}/events"
        whole = [e["EventId"] for e in
                 _paced(c, url, params={"PageNumber": 1, "PageSize": 30}).json()]
        assert len(whole) == 30  # no cap by default
        sandbox.sandbox.postalytics.page_cap = 5
        sandbox.sandbox.postalytics.cap_offset = cap_offset
        page1 = _paced(c, url, params={"PageNumber": 1, "PageSize": 10}).json()
        page2 = _paced(c, url, params={"PageNumber": 2, "PageSize": 10}).json()
        asked5 = _paced(c, url, params={"PageNumber": 2, "PageSize": 5}).json()
    assert [e["EventId"] for e in page1] == whole[:5]
    start = 10 if cap_offset is CapOffset.requested else 5
    assert [e["EventId"] for e in page2] == whole[start:start + 5]
    assert [e["EventId"] for e in asked5] == whole[5:10]  # at the cap, both formulas agree
