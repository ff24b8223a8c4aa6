"""No secret in any log record (ours, httpx's, httpcore's), exception text or repr."""

from __future__ import annotations

import asyncio
import base64
import logging
from urllib.parse import parse_qs

import httpx
import pytest

from mailsync.clients.auth import InMemoryTokenStore, OAuthTokenAuth
from mailsync.clients.highlevel import HighLevelAuthError, HighLevelClient
from mailsync.clients.postalytics import PostalyticsAuthError, PostalyticsClient, PostalyticsError
from mailsync.clients.ratelimit import FixedRateLimiter, WindowPacer
from mailsync.redact import Secret, install_log_redaction
from mailsync.store.tokens import StoredToken

PIT = "pit-never-logged-7f3a9c"
API_KEY = "postalytics-key-never-logged-91b2"
CLIENT_SECRET = "client-secret-never-logged-55aa"
CLIENT_ID = "client-id-never-logged-66bb"
OLD_REFRESH = "refresh-old-never-logged-77cc"
NEW_REFRESH = "refresh-new-never-logged-88dd"
OLD_ACCESS = "access-old-never-logged-99ee"
NEW_ACCESS = "access-new-never-logged-aaff"
SECRETS = [PIT, API_KEY, CLIENT_SECRET, CLIENT_ID, OLD_REFRESH, NEW_REFRESH, OLD_ACCESS,
           NEW_ACCESS, base64.b64encode(f"{API_KEY}:".encode()).decode()]


async def nosleep(_: float) -> None:
    await asyncio.sleep(0)


def echoing_server(request: httpx.Request) -> httpx.Response:
    """A hostile server that echoes credentials back in error bodies."""
    auth = request.headers.get("Authorization", "")
    if request.url.path == "/oauth/token":
        form = parse_qs(request.content.decode())
        if form["refresh_token"] == [OLD_REFRESH]:
            return httpx.Response(200, json={"access_token": NEW_ACCESS,
                                             "refresh_token": NEW_REFRESH, "expires_in": 86399})
        return httpx.Response(400, json={"error": f"bad grant {form}"})
    if "ReadTimeout" in request.url.path:
        raise httpx.ReadTimeout(f"timed out with {auth}", request=request)
    if auth in (f"Bearer {OLD_ACCESS}", f"Bearer {PIT}"):
        return httpx.Response(401, json={"message": f"token {auth} expired"})
    if request.url.path.endswith("/notes"):
        return httpx.Response(422, json={"message": [f"you sent {auth}", "body bad"]})
    return httpx.Response(500, json={"message": f"crashed handling {auth}"})


def postalytics_server(request: httpx.Request) -> httpx.Response:
    auth = request.headers["Authorization"]
    if request.url.path.endswith("/campaigns"):
        return httpx.Response(401, json={"error": {"message": f"Invalid API key {auth}"}})
    return httpx.Response(503, text=f"down for {auth} key {API_KEY}")


async def scenario(seen: list[str]) -> None:
    store = InMemoryTokenStore({"loc-s": StoredToken(refresh_token=Secret(OLD_REFRESH),
                                                     access_token=Secret(OLD_ACCESS))})
    oauth = OAuthTokenAuth("loc-s", CLIENT_ID, CLIENT_SECRET, store)
    transport = httpx.MockTransport(echoing_server)
    for auth in (oauth, PIT):
        client = HighLevelClient("https://services.leadconnectorhq.com", "loc-s", auth,
                                 transport=transport, pacer=WindowPacer(), max_attempts=2,
                                 sleep=nosleep)
        seen.append(repr(client))
        seen.append(repr(client.auth))
        for call in (client.add_tags("c1", ["t"]), client.create_note("c1", "b"),
                     client.create_note("ReadTimeout", "b")):
            try:
                seen.append(repr(await call))
            except HighLevelAuthError as exc:
                seen.append(str(exc))
                seen.append(repr(exc))
        await client.aclose()
    seen.append(repr(store.tokens))
    pclient = PostalyticsClient("https://api.postalytics.com/api/v1", API_KEY, "acme",
                                transport=httpx.MockTransport(postalytics_server),
                                limiter=FixedRateLimiter(1000, 1), max_attempts=2, sleep=nosleep)
    seen.append(repr(pclient))
    for coro in (pclient.list_campaigns(), pclient.events_page(1, 1)):
        try:
            await coro
        except (PostalyticsAuthError, PostalyticsError) as exc:
            seen.append(str(exc))
            seen.append(repr(exc))
            seen.append(repr(exc.outcome))
    await pclient.aclose()


def test_no_secret_anywhere(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    seen: list[str] = []
    with caplog.at_level(logging.DEBUG):
        for name in ("httpx", "httpcore", "mailsync"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        asyncio.run(scenario(seen))
        # A careless caller logging a raw value is still covered.
        logging.getLogger("mailsync.careless").debug("key=%s", API_KEY)
    assert caplog.records, "expected log records"
    assert any(r.name.startswith("httpx") for r in caplog.records)
    texts = [r.getMessage() for r in caplog.records] + [caplog.text] + seen
    assert any("HighLevel refused the token" in t for t in texts)
    assert any("account 'acme'" in t for t in texts)
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"leaked {secret[:8]}… in {text[:120]!r}"
