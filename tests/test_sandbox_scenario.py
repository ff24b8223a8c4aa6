"""The seeded scenario (no HTTP) and the admin routes (over HTTP)."""

# Fixtures are imported by name (conftest does not load them), so test arguments
# "redefine" the imported names: that is how pytest fixtures work.

from __future__ import annotations

import time
from collections import Counter

import httpx
from typer.testing import CliRunner

from mailsync.codes import CA_CODES, REST_LABEL, EventCode
from mailsync.sandbox.limits import HighLevelLimits
from mailsync.sandbox.openapi import validate_request
from mailsync.sandbox.scenario import Scenario, clean_event, page_indices
from mailsync.sandbox.server import SandboxServer
from tests.sandbox_fixtures import hl_client, location


def test_same_seed_same_world_whatever_the_advance_steps() -> None:
    a, b = Scenario(5, 90), Scenario(5, 90)
    a.advance(24 * 10)
    for _ in range(20):
        b.advance(12)
    ta = [e.to_truth() for c in a.campaigns for e in c.events]
    tb = [e.to_truth() for c in b.campaigns for e in c.events]
    assert ta == tb and ta
    assert [r.to_json() for r in a.recipients] == [r.to_json() for r in b.recipients]
    assert Scenario(6, 90).recipients[0].email != a.recipients[0].email
    ids = [e["event_id"] for e in ta]
    assert len(ids) == len(set(ids))


def test_population_and_journeys_look_like_the_brief() -> None:
    s = Scenario(1, 2000)
    s.advance(24 * 30)
    assert len(s.campaigns) == 3 and [c.country for c in s.campaigns] == ["US", "US", "CA"]
    assert len({c.location_id for c in s.campaigns}) >= 2
    share = Counter(r.match for r in s.recipients)
    assert 0.44 < share["carried"] / 2000 < 0.56 and 0.11 < share["none"] / 2000 < 0.19
    hl_ids = {c["id"] for c in s.hl_contacts}
    for r in s.recipients:
        assert (r.hl_contact_id in hl_ids) == (r.match != "none")
    codes = Counter(e.code for c in s.campaigns for e in c.events)
    assert codes[EventCode.ReRouted] > 0 and codes[EventCode.ReturnedToSender] > 0
    ca = s.campaigns[2]
    assert {e.code for e in ca.events} <= CA_CODES
    # Repeated pURL visits are separate events.
    visits = Counter((e.recipient.data_id, e.code) for c in s.campaigns for e in c.events
                     if e.code is EventCode.pURLOpened)
    assert max(visits.values()) > 1
    for camp in s.campaigns:  # emitted in time order, so newest-first is index arithmetic
        times = [e.at for e in camp.events]
        assert times == sorted(times)
    assert s.emitted == s.scheduled


def test_purl_events_use_the_odd_rest_label() -> None:
    s = Scenario(1, 300)
    s.advance(24 * 30)
    done = next(e for c in s.campaigns for e in c.events if e.code is EventCode.pURLCompleted)
    raw = clean_event(done)
    assert raw["Event"] == REST_LABEL[EventCode.pURLCompleted] == "purl Completed"
    assert raw["Metadata"]["Url"].startswith("https://")


def test_large_scenarios_stay_fast() -> None:
    start = time.perf_counter()
    s = Scenario(2, 20_000)
    s.advance(24 * 30)
    assert s.emitted > 100_000
    assert time.perf_counter() - start < 15


def test_page_indices() -> None:
    assert list(page_indices(7, 1, 3)) == [6, 5, 4]
    assert list(page_indices(7, 3, 3)) == [0]
    assert list(page_indices(7, 4, 3)) == []
    assert list(page_indices(0, 1, 100)) == []


def test_highlevel_windows_roll_over_with_a_fake_clock() -> None:
    now = [0.0]
    lim = HighLevelLimits(time_scale=0.5, limit=2, daily=5, clock=lambda: now[0])
    assert [lim.take("L").allowed for _ in range(3)] == [True, True, False]
    now[0] += 5.0  # the scaled window is 5 s
    v = lim.take("L")
    assert v.allowed and v.headers["X-RateLimit-Remaining"] == "1"
    assert v.headers["X-RateLimit-Interval-Milliseconds"] == "5000"
    now[0] += 5.0
    assert [lim.take("L").allowed for _ in range(3)] == [True, True, False]  # daily: 5 used
    assert lim.take("other").allowed  # per location


def test_request_validator_catches_what_the_spec_forbids() -> None:
    errs = validate_request("apps/contacts.json", "POST", "/contacts/{contactId}/tags",
                            headers={"Version": "2021-07-28"}, query={},
                            path_params={"contactId": "x"}, body={"tags": "not a list"},
                            has_body=True)
    assert errs and "tags" in errs[0]


def test_manifest_and_admin_routes(sandbox: SandboxServer) -> None:
    m = sandbox.manifest()
    assert m["postalytics_base_url"] == sandbox.url + "/postalytics/api/v1"
    assert m["highlevel_base_url"] == sandbox.url + "/highlevel"
    assert m["postalytics_api_key"]
    assert {loc["auth"] for loc in m["locations"]} == {"pit", "oauth"}
    oauth = next(loc for loc in m["locations"] if loc["auth"] == "oauth")
    assert {"client_id", "client_secret", "refresh_token", "token"} <= set(oauth)
    for camp in m["campaigns"]:
        assert set(camp) == {"drop_id", "name", "country", "location", "contact_id_field"}
        assert camp["location"] in {loc["id"] for loc in m["locations"]}
    adv = sandbox.advance(48)
    assert adv["clock"] == "2026-11-04T00:00:00Z" and adv["emitted"] > 0
    truth = sandbox.truth()
    assert sum(len(c["events"]) for c in truth["campaigns"]) == adv["total"]
    ev = truth["campaigns"][0]["events"][0]
    assert set(ev) >= {"event_id", "drop_id", "code", "data_id", "event_date", "url",
                       "malformed"}
    rec = sandbox.recipients()[0]
    assert set(rec) >= {"data_id", "drop_id", "email", "phone", "var_fields", "match",
                        "hl_contact_id", "location_id"}
    state = sandbox.state()["contacts"]
    assert all({"id", "locationId", "email", "phone", "tags", "notes"} <= set(c) for c in state)
    loc = location(sandbox)
    made = sandbox.create_contact(loc["id"], email="new@example.com", tags=["A"])
    assert made["tags"] == ["a"]
    with hl_client(sandbox, loc["token"]) as c:
        found = c.get("/contacts/search/duplicate",
                      params={"locationId": loc["id"], "email": "new@example.com"})
        assert found.json()["contact"]["id"] == made["id"]
        sandbox.delete_contact(made["id"])
        assert c.get(f"/contacts/{made['id']}").status_code == 404
    stats = sandbox.stats()
    assert stats["highlevel"]["by_route"]["GET /contacts/{contactId}"]["statuses"] == {"404": 1}
    assert sandbox.reset_stats()["highlevel"]["total"]["requests"] == 0
    assert httpx.post(sandbox.url + "/_sandbox/advance?hours=-1").status_code == 400


def test_cli_serve_is_a_typer_sub_app() -> None:
    from mailsync.sandbox.cli import sandbox_app

    result = CliRunner().invoke(sandbox_app, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--port", "--seed", "--contacts", "--faults", "--time-scale", "--messy"):
        assert option in result.output
    bad = CliRunner().invoke(sandbox_app, ["serve", "--faults", "error=7"])
    assert bad.exit_code != 0
