"""Injected faults, checked from the client's side over real HTTP."""

# Fixtures are imported by name (conftest does not load them), so test arguments
# "redefine" the imported names: that is how pytest fixtures work.

from __future__ import annotations

import httpx
import pytest

from mailsync.sandbox.faults import FaultPlan, FaultSpec, FaultSpecError
from mailsync.sandbox.server import SandboxServer
from tests.sandbox_fixtures import (
    contact_of,
    hl_client,
    location,
    pl_client,
)


def test_spec_parses_round_trips_and_rejects_nonsense() -> None:
    spec = FaultSpec.parse("error=0.1,slow=0.05,reset=0.02,drop=0.02,burst429=0.01,slow_seconds=5")
    assert (spec.error, spec.slow, spec.reset, spec.drop, spec.burst429) == (
        0.1, 0.05, 0.02, 0.02, 0.01)
    assert spec.slow_seconds == 5 and spec.scope == "highlevel"
    assert FaultSpec.parse(spec.to_string()) == spec
    assert FaultSpec.from_mapping({"spec": "drop=0.5", "scope": "all"}).scope == "all"
    assert not FaultSpec.parse("").active and not FaultSpec.parse("none").active
    for bad in ("error=2", "error=0.6,drop=0.6", "bogus=1", "error", "scope=moon",
                "codes=404"):
        with pytest.raises(FaultSpecError):
            FaultSpec.parse(bad)


def test_draws_are_deterministic_given_the_seed() -> None:
    spec = FaultSpec.parse("error=0.2,reset=0.2,drop=0.2")
    a, b, c = FaultPlan(7, spec), FaultPlan(7, spec), FaultPlan(8, spec)
    seq_a = [a.draw("highlevel").kind for _ in range(200)]
    assert seq_a == [b.draw("highlevel").kind for _ in range(200)]
    assert seq_a != [c.draw("highlevel").kind for _ in range(200)]
    assert {"error", "reset", "drop", None} == set(seq_a)
    assert FaultPlan(7, spec).draw("postalytics").kind is None  # out of scope


def _notes(sb: SandboxServer, location_id: str, cid: str) -> list[str]:
    contact = next(c for c in sb.state(location_id)["contacts"] if c["id"] == cid)
    return [n["body"] for n in contact["notes"]]


def test_error_fault_is_a_5xx_and_nothing_lands(sandbox: SandboxServer) -> None:
    loc = location(sandbox)
    cid = contact_of(sandbox, loc["id"])["id"]
    sandbox.set_faults(error=1.0)
    with hl_client(sandbox, loc["token"]) as c:
        statuses = {c.post(f"/contacts/{cid}/notes", json={"body": "e"}).status_code
                    for _ in range(12)}
    assert statuses <= {500, 502, 503} and len(statuses) > 1
    assert _notes(sandbox, loc["id"], cid) == []
    assert sandbox.stats()["highlevel"]["total"]["faults"]["error"] == 12


def test_slow_fault_times_out_the_client_but_the_write_lands() -> None:
    with SandboxServer(seed=1, contacts=6, faults="slow=1,slow_seconds=5",
                       time_scale=0.1) as sb:  # 5 s × 0.1 = 0.5 s hold
        loc = location(sb)
        cid = contact_of(sb, loc["id"])["id"]
        with hl_client(sb, loc["token"], timeout=0.2) as c, pytest.raises(httpx.ReadTimeout):
            c.post(f"/contacts/{cid}/notes", json={"body": "slow"})
        assert _notes(sb, loc["id"], cid) == ["slow"]
        with hl_client(sb, loc["token"], timeout=2) as c:  # a patient client gets the answer
            assert c.get(f"/contacts/{cid}").status_code == 200


def test_reset_cuts_the_connection_before_processing(sandbox: SandboxServer) -> None:
    loc = location(sandbox)
    cid = contact_of(sandbox, loc["id"])["id"]
    sandbox.set_faults("reset=1")
    with hl_client(sandbox, loc["token"]) as c, pytest.raises(
            (httpx.RemoteProtocolError, httpx.ReadError)):
        c.post(f"/contacts/{cid}/notes", json={"body": "never stored"})
    assert _notes(sandbox, loc["id"], cid) == []


def test_commit_then_drop_stores_the_note_but_the_answer_is_lost(sandbox: SandboxServer) -> None:
    loc = location(sandbox)
    cid = contact_of(sandbox, loc["id"])["id"]
    sandbox.set_faults("drop=1")
    with hl_client(sandbox, loc["token"]) as c:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            c.post(f"/contacts/{cid}/notes", json={"body": "stored anyway"})
        sandbox.set_faults()
        # The same client keeps working after the cut (its pool drops the dead connection).
        listed = c.get(f"/contacts/{cid}/notes")
    assert listed.status_code == 200
    assert [n["body"] for n in listed.json()["notes"]] == ["stored anyway"]
    # A blind retry would duplicate it: exactly the case the ledger has to settle.
    assert sandbox.stats()["writes"]["notes_created"] == 1


def test_burst429_is_a_429_with_rate_headers(sandbox: SandboxServer) -> None:
    loc = location(sandbox)
    cid = contact_of(sandbox, loc["id"])["id"]
    sandbox.set_faults(burst429=1.0)
    with hl_client(sandbox, loc["token"]) as c:
        resp = c.post(f"/contacts/{cid}/tags", json={"tags": ["x"]})
    assert resp.status_code == 429
    assert "X-RateLimit-Remaining" in resp.headers and "Retry-After" not in resp.headers
    stats = sandbox.stats()["highlevel"]["total"]
    assert stats["faults"] == {"burst429": 1} and stats["rate_limited"] == 0


def test_faults_skip_postalytics_unless_scoped(sandbox: SandboxServer) -> None:
    sandbox.set_faults("error=1")
    with pl_client(sandbox) as c:
        assert c.get("/campaigns").status_code == 200
    sandbox.set_faults("error=1,scope=postalytics")
    with pl_client(sandbox) as c:
        resp = c.get("/campaigns")
        assert resp.status_code in (500, 502, 503)
        assert resp.json()["error"]["status_code"] == resp.status_code
    sandbox.set_faults("drop=1,scope=all")
    with pl_client(sandbox) as c, pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        c.get("/campaigns")


def test_get_and_bad_faults_via_admin(sandbox: SandboxServer) -> None:
    got = sandbox.set_faults({"spec": "error=0.25,codes=503"})
    assert got["error"] == 0.25 and got["codes"] == [503]
    resp = httpx.post(sandbox.url + "/_sandbox/faults", json={"error": "lots"})
    assert resp.status_code == 400
    assert httpx.get(sandbox.url + "/_sandbox/faults").json()["error"] == 0.25
