"""OAuth failures say, once and in one line, which location, which store and what to do."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from sqlmodel import Session

from mailsync.clients.auth import (
    InMemoryTokenStore,
    OAuthTokenAuth,
    RefreshFailure,
    TokenRefreshError,
)
from mailsync.clients.highlevel import HighLevelAuthError, HighLevelClient
from mailsync.clients.ratelimit import WindowPacer
from mailsync.config import Settings
from mailsync.redact import Secret
from mailsync.store.engine import get_engine
from mailsync.store.models import OAuthTokenRow, StoreMeta
from mailsync.store.tokens import DatabaseTokenStore, StoredToken
from mailsync.sync.context import SyncContext

BASE = "https://services.leadconnectorhq.com"
LOC = "loc-msg-7"
NAME = "Boston Back Bay"
SOURCE = "env HL_REFRESH_BOSTON"
CLIENT_ID = "cid-messages-000001"
CLIENT_SECRET = "csecret-messages-000001"
DEAD = "rt-dead-messages-000001"
SEED = "rt-seed-messages-000001"
SECRETS = (CLIENT_ID, CLIENT_SECRET, DEAD, SEED, "at-old-messages-0001")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def nosleep(_: float) -> None:
    await asyncio.sleep(0)


class TokenEndpoint:
    """HighLevel's token endpoint: `good` refresh tokens rotate, any other is invalid_grant."""

    def __init__(self, good: tuple[str, ...] = ()) -> None:
        self.good = set(good)
        self.presented: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/oauth/token":
            # The API itself: the stored access token has expired.
            return httpx.Response(401, json={"statusCode": 401, "message": "Invalid JWT"})
        token = parse_qs(request.content.decode())["refresh_token"][0]
        self.presented.append(token)
        if token in self.good:
            return httpx.Response(200, json={"access_token": "at-new-messages-0001",
                                             "refresh_token": "rt-new-messages-0001",
                                             "expires_in": 86399})
        return httpx.Response(400, json={"error": "invalid_grant",
                                         "error_description": "invalid_grant",
                                         "message": "invalid_grant"})


def store_on(url: str) -> tuple[DatabaseTokenStore, str]:
    engine = get_engine(url)
    with Session(engine) as s:
        meta = s.get(StoreMeta, "store_id")
        assert meta is not None
        store_id = meta.value
    return DatabaseTokenStore(engine, Secret(CLIENT_SECRET)), store_id


def oauth(store: Any, seed: str | None = None, name: str | None = NAME) -> OAuthTokenAuth:
    return OAuthTokenAuth(LOC, CLIENT_ID, CLIENT_SECRET, store, refresh_token=seed,
                          location_name=name, refresh_token_source=SOURCE, sleep=nosleep)


def http_for(handler: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=BASE, transport=httpx.MockTransport(handler))


def assert_one_clear_line(text: str, *once: str) -> None:
    assert "\n" not in text
    for part in once:
        assert text.count(part) == 1, f"{part!r} appears {text.count(part)} times in {text!r}"
    for secret in SECRETS:
        assert secret not in text


def test_a_rotated_away_refresh_token_says_where_and_what_to_do(db_url: str) -> None:
    store, store_id = store_on(db_url)
    store.save(LOC, StoredToken(refresh_token=Secret(DEAD)))
    endpoint = TokenEndpoint()
    with pytest.raises(TokenRefreshError) as info:
        run(oauth(store).token(http_for(endpoint)))
    exc = info.value
    assert exc.kind is RefreshFailure.grant_refused and exc.http_status == 400
    text = str(exc)
    assert_one_clear_line(text, NAME, LOC, store_id, "re-authorise", "invalid_grant")
    assert "the refresh token this store holds was already used" in text
    assert "another mailsync store" in text and "newest refresh token" in text
    assert f"set the new refresh token in {SOURCE}" in text
    assert "which last saved this location's OAuth tokens at " in text
    assert endpoint.presented == [DEAD]


def test_the_same_message_through_a_write_that_needs_a_refresh(db_url: str) -> None:
    store, store_id = store_on(db_url)
    store.save(LOC, StoredToken(refresh_token=Secret(DEAD),
                                access_token=Secret("at-old-messages-0001")))
    endpoint = TokenEndpoint()
    client = HighLevelClient(BASE, LOC, oauth(store), transport=httpx.MockTransport(endpoint),
                             pacer=WindowPacer(), sleep=nosleep, location_name=NAME)
    with pytest.raises(HighLevelAuthError) as info:
        run(client.create_note("c1", "hello"))
    assert isinstance(info.value.__cause__, TokenRefreshError)
    assert info.value.__cause__.kind is RefreshFailure.grant_refused
    assert info.value.http_status == 400
    assert info.value.refresh_failure is RefreshFailure.grant_refused
    assert_one_clear_line(str(info.value), NAME, LOC, store_id, "re-authorise", "invalid_grant")


def test_concurrent_writes_spend_one_refused_token_once_and_agree_on_the_words() -> None:
    store = InMemoryTokenStore({LOC: StoredToken(refresh_token=Secret(DEAD),
                                                 access_token=Secret("at-old-messages-0001"))})
    endpoint = TokenEndpoint()
    client = HighLevelClient(BASE, LOC, oauth(store), transport=httpx.MockTransport(endpoint),
                             pacer=WindowPacer(), sleep=nosleep, location_name=NAME)

    async def burst() -> list[Any]:
        return await asyncio.gather(*(client.add_tags(f"c{i}", ["t"]) for i in range(8)),
                                    return_exceptions=True)

    errors = run(burst())
    assert all(isinstance(e, HighLevelAuthError) for e in errors)
    assert len({str(e) for e in errors}) == 1
    assert endpoint.presented == [DEAD]  # never presented again once refused


def test_a_new_refresh_token_set_in_the_variable_replaces_a_dead_stored_one() -> None:
    store = InMemoryTokenStore({LOC: StoredToken(refresh_token=Secret(DEAD))})
    endpoint = TokenEndpoint(good=(SEED,))
    token = run(oauth(store, seed=SEED).token(http_for(endpoint)))
    assert token.get() == "at-new-messages-0001" and endpoint.presented == [DEAD, SEED]
    saved = store.load(LOC)
    assert saved is not None and saved.refresh_token.get() == "rt-new-messages-0001"


def test_both_the_stored_and_the_configured_token_refused() -> None:
    store = InMemoryTokenStore({LOC: StoredToken(refresh_token=Secret(DEAD))})
    with pytest.raises(TokenRefreshError) as info:
        run(oauth(store, seed=SEED).token(http_for(TokenEndpoint())))
    text = str(info.value)
    assert_one_clear_line(text, NAME, "re-authorise", "invalid_grant")
    assert f"the refresh token this store holds, and the one configured in {SOURCE}" in text


def test_a_used_configured_token_with_an_empty_store(db_url: str) -> None:
    store, store_id = store_on(db_url)
    with pytest.raises(TokenRefreshError) as info:
        run(oauth(store, seed=SEED).token(http_for(TokenEndpoint())))
    text = str(info.value)
    assert_one_clear_line(text, NAME, store_id, "re-authorise", "invalid_grant")
    assert f"the refresh token configured in {SOURCE} was already used" in text
    assert "which holds no OAuth tokens for this location" in text


def test_no_refresh_token_at_all(db_url: str) -> None:
    store, store_id = store_on(db_url)
    endpoint = TokenEndpoint()
    with pytest.raises(TokenRefreshError) as info:
        run(oauth(store).token(http_for(endpoint)))
    exc = info.value
    assert exc.kind is RefreshFailure.no_refresh_token and endpoint.presented == []
    text = str(exc)
    assert_one_clear_line(text, NAME, store_id)
    assert text.startswith(f"location {NAME} ({LOC}): no OAuth refresh token: {SOURCE} is not "
                           "set and this store holds none")


def test_an_unreachable_token_endpoint() -> None:
    store = InMemoryTokenStore({LOC: StoredToken(refresh_token=Secret(DEAD))})
    calls = [0]

    def refused(request: httpx.Request) -> httpx.Response:
        calls[0] += 1
        raise httpx.ConnectError("All connection attempts failed", request=request) from (
            ConnectionRefusedError(111, "Connect call failed"))

    with pytest.raises(TokenRefreshError) as info:
        run(oauth(store).token(http_for(refused)))
    exc = info.value
    assert exc.kind is RefreshFailure.unreachable and calls[0] == 3
    assert str(exc) == (
        f"location {NAME} ({LOC}): OAuth token refresh failed: cannot reach the HighLevel "
        "OAuth token endpoint at services.leadconnectorhq.com:443: connection refused "
        "(3 attempts); the stored tokens are unchanged and the next run tries again")
    assert store.load(LOC) is not None  # nothing lost: the refresh token was never spent


def test_a_refused_oauth_app_names_the_client_settings() -> None:
    store = InMemoryTokenStore({LOC: StoredToken(refresh_token=Secret(DEAD))})
    answer = httpx.Response(401, json={"error": "invalid_client",
                                       "error_description": "bad client credentials"})
    with pytest.raises(TokenRefreshError) as info:
        run(oauth(store).token(http_for(lambda r: answer)))
    assert info.value.kind is RefreshFailure.client_refused
    assert "client_id and client_secret" in str(info.value)
    assert_one_clear_line(str(info.value), NAME, "invalid_client")


def test_database_store_describes_itself_without_tokens(db_url: str) -> None:
    store, store_id = store_on(db_url)
    assert store.describe(LOC) == f"store {store_id}, which holds no OAuth tokens for this location"
    store.save(LOC, StoredToken(refresh_token=Secret(DEAD), access_token=Secret("at-x-000001")))
    with Session(store._engine) as s:
        row = s.get(OAuthTokenRow, LOC)
        assert row is not None
        row.updated_at = datetime(2026, 11, 20, 12, 34, 56, tzinfo=UTC)
        s.add(row)
        s.commit()
    text = store.describe(LOC)
    assert text == (f"store {store_id}, which last saved this location's OAuth tokens at "
                    "2026-11-20 12:34 UTC")
    assert DEAD not in text and "at-x-000001" not in text


def test_the_sync_context_passes_the_configured_name(tmp_path: Any) -> None:
    settings = Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'ctx.db'}"},
        "locations": [
            {"id": LOC, "name": NAME, "oauth": {
                "client_id_env": "CID", "client_secret_env": "CSECRET",
                "refresh_token_env": "HL_REFRESH_BOSTON"}},
            {"id": "loc-pit-1", "token_env": "PIT"}]})
    env = {"CID": CLIENT_ID, "CSECRET": CLIENT_SECRET, "PIT": "pit-context-000001"}
    from mailsync.config import env_resolver

    ctx = SyncContext(settings, resolve_secret=env_resolver(env))
    client = ctx.highlevel(LOC)
    assert client.location_name == NAME and client.subject == f"location {NAME} ({LOC})"
    assert isinstance(client.auth, OAuthTokenAuth) and client.auth.label == client.subject
    assert client.auth.refresh_token_source == SOURCE
    assert ctx.highlevel("loc-pit-1").subject == "location loc-pit-1"


def test_a_refused_static_token_names_the_location() -> None:
    client = HighLevelClient(BASE, LOC, "pit-static-msg-000001", location_name=NAME,
                             transport=httpx.MockTransport(lambda r: httpx.Response(
                                 401, json={"statusCode": 401, "message": "Invalid JWT"})),
                             pacer=WindowPacer(), sleep=nosleep)
    with pytest.raises(HighLevelAuthError) as info:
        run(client.add_tags("c1", ["t"]))
    assert str(info.value) == (f"HighLevel refused the token for location {NAME} ({LOC}): "
                               "HTTP 401 Unauthorized: Invalid JWT")
    assert info.value.http_status == 401


def test_a_real_unreachable_token_endpoint_is_refused_not_hung() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = InMemoryTokenStore({LOC: StoredToken(refresh_token=Secret(DEAD))})
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(TokenRefreshError) as info:
        run(oauth(store).token(http))
    assert info.value.kind is RefreshFailure.unreachable
    assert f"at 127.0.0.1:{port}: connection refused" in str(info.value)
