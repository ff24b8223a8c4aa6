"""OAuth locations: refresh rotation, the 30 s repeat, expiry, over real HTTP."""

# Fixtures are imported by name (conftest does not load them), so test arguments
# "redefine" the imported names: that is how pytest fixtures work.

from __future__ import annotations

import time
from typing import Any

import httpx

from mailsync.sandbox.server import SandboxServer
from tests.sandbox_fixtures import (
    assert_conforms,
    contact_of,
    hl_client,
    location,
)


def _refresh(sb: SandboxServer, loc: dict[str, Any], refresh_token: str) -> httpx.Response:
    return httpx.post(sb.highlevel_url + "/oauth/token", data={
        "client_id": loc["client_id"], "client_secret": loc["client_secret"],
        "grant_type": "refresh_token", "refresh_token": refresh_token, "user_type": "Location"})


def test_refresh_rotates_and_issues_a_working_token(sandbox: SandboxServer) -> None:
    loc = location(sandbox, auth="oauth")
    cid = contact_of(sandbox, loc["id"])["id"]
    resp = _refresh(sandbox, loc, loc["refresh_token"])
    assert resp.status_code == 200
    assert_conforms(resp, "/oauth/token", "apps/oauth.json")
    grant = resp.json()
    assert grant["refresh_token"] != loc["refresh_token"]
    assert grant["locationId"] == loc["id"] and grant["expires_in"] == 86399
    with hl_client(sandbox, grant["access_token"]) as c:
        assert c.get(f"/contacts/{cid}").status_code == 200
    # A concurrent refresh with the just-rotated token gets the same pair...
    again = _refresh(sandbox, loc, loc["refresh_token"])
    assert again.status_code == 200 and again.json() == grant
    # ...and the new refresh token rotates again; then the first one is dead for good.
    third = _refresh(sandbox, loc, grant["refresh_token"])
    assert third.status_code == 200
    dead = _refresh(sandbox, loc, loc["refresh_token"])
    assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant"
    assert sandbox.manifest()["locations"][-1]["refresh_token"] == third.json()["refresh_token"]


def test_a_refresh_token_older_than_the_last_rotation_is_refused() -> None:
    # The 30 s repeat window covers only the just-rotated token (and is not time-scaled:
    # it is how long a client may take to retry a lost answer).
    with SandboxServer(seed=1, contacts=6, time_scale=0.01) as sb:
        loc = location(sb, auth="oauth")
        first = _refresh(sb, loc, loc["refresh_token"])
        assert first.status_code == 200
        assert _refresh(sb, loc, first.json()["refresh_token"]).status_code == 200
        late = _refresh(sb, loc, loc["refresh_token"])
        assert late.status_code == 400
        assert_conforms(late, "/oauth/token", "apps/oauth.json")


def test_bad_client_and_missing_fields(sandbox: SandboxServer) -> None:
    loc = location(sandbox, auth="oauth")
    bad = httpx.post(sandbox.highlevel_url + "/oauth/token", data={
        "client_id": "nope", "client_secret": "nope", "grant_type": "refresh_token",
        "refresh_token": loc["refresh_token"]})
    assert bad.status_code == 401
    assert_conforms(bad, "/oauth/token", "apps/oauth.json")
    missing = httpx.post(sandbox.highlevel_url + "/oauth/token",
                         data={"client_id": loc["client_id"]})
    assert missing.status_code == 422 and isinstance(missing.json()["message"], list)


def test_expired_access_token_gives_401_until_refreshed(sandbox: SandboxServer) -> None:
    loc = location(sandbox, auth="oauth")
    cid = contact_of(sandbox, loc["id"])["id"]
    with hl_client(sandbox, loc["token"]) as c:
        assert c.get(f"/contacts/{cid}").status_code == 200
        sandbox.expire_token(loc["id"])
        expired = c.get(f"/contacts/{cid}")
        assert expired.status_code == 401
        assert_conforms(expired, "/contacts/{contactId}")
    grant = _refresh(sandbox, loc, loc["refresh_token"]).json()
    with hl_client(sandbox, grant["access_token"]) as c:
        assert c.get(f"/contacts/{cid}").status_code == 200


def test_access_token_expires_on_its_own_under_time_scale() -> None:
    with SandboxServer(seed=1, contacts=6, time_scale=0.00002) as sb:  # 86399 s → ~1.7 s
        loc = location(sb, auth="oauth")
        cid = contact_of(sb, loc["id"])["id"]
        with hl_client(sb, loc["token"]) as c:
            assert c.get(f"/contacts/{cid}").status_code in (200, 429)
            time.sleep(1.9)
            assert c.get(f"/contacts/{cid}").status_code == 401
