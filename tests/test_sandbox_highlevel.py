"""The sandbox's HighLevel API over real HTTP: auth, validation, tags, notes, lookup, limits."""

# Fixtures are imported by name (conftest does not load them), so test arguments
# "redefine" the imported names: that is how pytest fixtures work.

from __future__ import annotations

import time

import httpx

from mailsync.sandbox.server import SandboxServer
from tests.sandbox_fixtures import (
    assert_conforms,
    contact_of,
    hl_client,
    location,
)

RATE_HEADERS = ("X-RateLimit-Max", "X-RateLimit-Remaining", "X-RateLimit-Interval-Milliseconds",
                "X-RateLimit-Limit-Daily", "X-RateLimit-Daily-Remaining")


def _has_rate_headers(resp: httpx.Response) -> None:
    for name in RATE_HEADERS:
        assert name in resp.headers, name


def test_unknown_token_is_401_with_documented_body(sandbox: SandboxServer) -> None:
    loc = location(sandbox)
    cid = contact_of(sandbox, loc["id"])["id"]
    with hl_client(sandbox, "not-a-token") as c:
        resp = c.get(f"/contacts/{cid}")
    assert resp.status_code == 401
    body = resp.json()
    assert set(body) == {"statusCode", "message", "error"} and body["statusCode"] == 401
    _has_rate_headers(resp)
    assert_conforms(resp, "/contacts/{contactId}")
    with hl_client(sandbox) as c:  # no Authorization at all
        assert c.get(f"/contacts/{cid}").status_code == 401


def test_other_locations_token_is_403(sandbox: SandboxServer) -> None:
    mine, other = location(sandbox, index=0), location(sandbox, index=1)
    cid = contact_of(sandbox, mine["id"])["id"]
    with hl_client(sandbox, other["token"]) as c:
        resp = c.post(f"/contacts/{cid}/tags", json={"tags": ["x"]})
        assert resp.status_code == 403
        assert resp.json()["message"] == "The token does not have access to this location."
        dup = c.get("/contacts/search/duplicate",
                    params={"locationId": mine["id"], "email": "a@b.c"})
        assert dup.status_code == 403
        up = c.post("/contacts/upsert", json={"locationId": mine["id"], "email": "a@b.c"})
        assert up.status_code == 403
    assert "x" not in contact_of(sandbox, mine["id"])["tags"]


def test_version_header_required_422_list(sandbox: SandboxServer) -> None:
    loc = location(sandbox)
    cid = contact_of(sandbox, loc["id"])["id"]
    with hl_client(sandbox, loc["token"], version=False) as c:
        resp = c.get(f"/contacts/{cid}")
        assert resp.status_code == 422
        assert isinstance(resp.json()["message"], list)
        assert_conforms(resp, "/contacts/{contactId}")
        wrong = c.get(f"/contacts/{cid}", headers={"Version": "2021-04-15"})
        assert wrong.status_code == 422
    violations = sandbox.violations()
    assert len(violations) == 2 and "Version" in violations[0]["errors"][0]


def test_add_tags_201_lowercased_full_list_and_delete_with_body(sandbox: SandboxServer) -> None:
    loc = location(sandbox)
    contact = contact_of(sandbox, loc["id"])
    before = contact["tags"]
    with hl_client(sandbox, loc["token"]) as c:
        resp = c.post(f"/contacts/{contact['id']}/tags",
                      json={"tags": ["Postalytics Event: Mailed", "Postalytics Event: InTransit"]})
        assert resp.status_code == 201
        assert resp.json()["tags"] == [*before, "postalytics event: mailed",
                                       "postalytics event: intransit"]
        assert_conforms(resp, "/contacts/{contactId}/tags")
        again = c.post(f"/contacts/{contact['id']}/tags",
                       json={"tags": ["POSTALYTICS EVENT: MAILED"]})
        assert again.status_code == 201
        assert again.json()["tags"].count("postalytics event: mailed") == 1
        # DELETE carries a JSON body; matching is case-insensitive.
        rm = c.request("DELETE", f"/contacts/{contact['id']}/tags",
                       json={"tags": ["Postalytics Event: Mailed"]})
        assert rm.status_code == 200
        assert rm.json()["tags"] == [*before, "postalytics event: intransit"]
        assert_conforms(rm, "/contacts/{contactId}/tags")
        no_body = c.request("DELETE", f"/contacts/{contact['id']}/tags")
        assert no_body.status_code == 422
        got = c.get(f"/contacts/{contact['id']}")
        assert got.status_code == 200
        assert got.json()["contact"]["tags"][-1] == "postalytics event: intransit"
        assert_conforms(got, "/contacts/{contactId}")


def test_notes_create_list_get_and_whitelist(sandbox: SandboxServer) -> None:
    loc = location(sandbox)
    cid = contact_of(sandbox, loc["id"])["id"]
    with hl_client(sandbox, loc["token"]) as c:
        created = c.post(f"/contacts/{cid}/notes", json={"body": "Mailed [ms:abc]"})
        assert created.status_code == 201
        note = created.json()["note"]
        assert note["body"] == "Mailed [ms:abc]" and note["contactId"] == cid
        assert_conforms(created, "/contacts/{contactId}/notes")
        c.post(f"/contacts/{cid}/notes", json={"body": "second"})
        listed = c.get(f"/contacts/{cid}/notes")
        assert [n["body"] for n in listed.json()["notes"]] == ["second", "Mailed [ms:abc]"]
        assert_conforms(listed, "/contacts/{contactId}/notes")
        one = c.get(f"/contacts/{cid}/notes/{note['id']}")
        assert one.status_code == 200 and one.json()["note"]["id"] == note["id"]
        # Keys the DTO does not declare are refused as HighLevel's NestJS pipes do.
        bad = c.post(f"/contacts/{cid}/notes", json={"body": "x", "locationId": loc["id"]})
        assert bad.status_code == 422
        assert bad.json()["message"] == ["property locationId should not exist"]
        missing = c.post(f"/contacts/{cid}/notes", json={"title": "no body"})
        assert missing.status_code == 422
        assert_conforms(missing, "/contacts/{contactId}/notes")
        assert c.get("/contacts/nope0000000000000000/notes").status_code == 404


def test_rejected_notes_answer_422_with_message_list(sandbox: SandboxServer) -> None:
    loc = location(sandbox)
    cid = contact_of(sandbox, loc["id"])["id"]
    sandbox.reject_notes([cid], ["body is too long"])
    with hl_client(sandbox, loc["token"]) as c:
        resp = c.post(f"/contacts/{cid}/notes", json={"body": "x"})
        assert resp.status_code == 422
        assert resp.json() == {"statusCode": 422, "message": ["body is too long"],
                               "error": "Unprocessable Entity"}
        assert_conforms(resp, "/contacts/{contactId}/notes")
        sandbox.accept_notes([cid])
        assert c.post(f"/contacts/{cid}/notes", json={"body": "x"}).status_code == 201


def test_duplicate_search_by_email_phone_or_null(sandbox: SandboxServer) -> None:
    loc = location(sandbox)
    contact = next(c for c in sandbox.state(loc["id"])["contacts"] if c["email"] and c["phone"])
    with hl_client(sandbox, loc["token"]) as c:
        by_email = c.get("/contacts/search/duplicate",
                         params={"locationId": loc["id"], "email": contact["email"].upper()})
        assert by_email.status_code == 200 and by_email.json()["contact"]["id"] == contact["id"]
        digits = contact["phone"][2:]
        formatted = f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"
        by_phone = c.get("/contacts/search/duplicate",
                         params={"locationId": loc["id"], "number": formatted})
        assert by_phone.json()["contact"]["id"] == contact["id"]
        none = c.get("/contacts/search/duplicate",
                     params={"locationId": loc["id"], "email": "nobody@nowhere.example"})
        assert none.status_code == 200 and none.json() == {"contact": None}
        no_loc = c.get("/contacts/search/duplicate", params={"email": "a@b.c"})
        assert no_loc.status_code == 422


def test_upsert_never_touches_tags_unless_sent(sandbox: SandboxServer) -> None:
    loc = location(sandbox)
    contact = next(c for c in sandbox.state(loc["id"])["contacts"] if c["email"])
    with hl_client(sandbox, loc["token"]) as c:
        c.post(f"/contacts/{contact['id']}/tags", json={"tags": ["keep me"]})
        up = c.post("/contacts/upsert", json={"locationId": loc["id"], "email": contact["email"],
                                              "firstName": "Renamed"})
        assert up.status_code == 200 and up.json()["new"] is False
        assert "keep me" in up.json()["contact"]["tags"]
        assert up.json()["contact"]["firstName"] == "Renamed"
        assert_conforms(up, "/contacts/upsert")
        replaced = c.post("/contacts/upsert", json={"locationId": loc["id"],
                                                    "email": contact["email"], "tags": ["Only"]})
        assert replaced.json()["contact"]["tags"] == ["only"]
        new = c.post("/contacts/upsert", json={"locationId": loc["id"],
                                               "email": "fresh@example.com"})
        assert new.json()["new"] is True
        assert_conforms(new, "/contacts/upsert")
        missing = c.post("/contacts/upsert", json={"email": "x@example.com"})
        assert missing.status_code == 422
        assert any("locationId" in m for m in missing.json()["message"])


def test_429_after_100_requests_in_a_window_with_headers() -> None:
    with SandboxServer(seed=1, contacts=6) as sb:  # real 10 s window: no race with the clock
        loc = location(sb)
        cid = contact_of(sb, loc["id"])["id"]
        with hl_client(sb, loc["token"]) as c:
            first = c.get(f"/contacts/{cid}")
            _has_rate_headers(first)
            assert first.headers["X-RateLimit-Max"] == "100"
            assert first.headers["X-RateLimit-Remaining"] == "99"
            assert first.headers["X-RateLimit-Interval-Milliseconds"] == "10000"
            statuses = [c.get(f"/contacts/{cid}").status_code for _ in range(99)]
            assert set(statuses) == {200}
            over = c.get(f"/contacts/{cid}")
            assert over.status_code == 429
            assert over.headers["X-RateLimit-Remaining"] == "0"
            assert "Retry-After" not in over.headers
            _has_rate_headers(over)
        stats = sb.stats()["highlevel"]["by_location"][loc["id"]]
        assert stats["rate_limited"] == 1 and stats["requests"] == 101


def test_time_scale_shrinks_the_window(fast_sandbox: SandboxServer) -> None:
    loc = location(fast_sandbox)
    cid = contact_of(fast_sandbox, loc["id"])["id"]
    with hl_client(fast_sandbox, loc["token"]) as c:
        resp = c.get(f"/contacts/{cid}")
        assert resp.headers["X-RateLimit-Interval-Milliseconds"] == "100"
        time.sleep(0.15)
        assert c.get(f"/contacts/{cid}").headers["X-RateLimit-Remaining"] == "99"


def test_daily_quota_and_optional_retry_after() -> None:
    with SandboxServer(seed=1, contacts=6, daily_quota=3, retry_after=True) as sb:
        loc = location(sb)
        cid = contact_of(sb, loc["id"])["id"]
        with hl_client(sb, loc["token"]) as c:
            remaining = [c.get(f"/contacts/{cid}").headers["X-RateLimit-Daily-Remaining"]
                         for _ in range(3)]
            assert remaining == ["2", "1", "0"]
            over = c.get(f"/contacts/{cid}")
            assert over.status_code == 429 and "Retry-After" in over.headers
            assert over.headers["X-RateLimit-Limit-Daily"] == "3"
            sb.reset_limits()
            assert c.get(f"/contacts/{cid}").status_code == 200
            sb.set_daily_remaining(loc["id"], 0)
            assert c.get(f"/contacts/{cid}").status_code == 429


def test_revoke_and_restore_a_location(sandbox: SandboxServer) -> None:
    loc = location(sandbox)
    cid = contact_of(sandbox, loc["id"])["id"]
    with hl_client(sandbox, loc["token"]) as c:
        sandbox.revoke(loc["id"])
        assert c.get(f"/contacts/{cid}").status_code == 401
        sandbox.restore(loc["id"])
        assert c.get(f"/contacts/{cid}").status_code == 200
