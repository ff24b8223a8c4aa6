"""Secret, StoredToken, the in-memory store, static and OAuth auth (single-flight refresh)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from mailsync.clients.auth import (
    AuthError,
    InMemoryTokenStore,
    OAuthTokenAuth,
    StaticTokenAuth,
    TokenRefreshError,
    TokenStore,
)
from mailsync.redact import Secret, redact
from mailsync.store.tokens import StoredToken

LOC = "loc-auth-1"
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_secret_never_shows_its_value() -> None:
    s = Secret("super-secret-value-1")
    assert repr(s) == str(s) == f"{s}" == "***"
    assert "super-secret-value-1" not in repr([s, {"k": s}])
    assert s.get() == "super-secret-value-1"
    assert s == Secret("super-secret-value-1") and s != Secret("other-value-xyz")
    assert redact("token super-secret-value-1 here") == "token *** here"
    with pytest.raises(TypeError):
        Secret(123)  # type: ignore[arg-type]


def test_stored_token_coerces_plain_strings_and_naive_dates() -> None:
    token = StoredToken(refresh_token="rt-plain-0001", access_token="at-plain-0001",  # type: ignore[arg-type]
                        expires_at=datetime(2026, 1, 1, 0, 0))
    assert isinstance(token.refresh_token, Secret) and isinstance(token.access_token, Secret)
    assert token.expires_at is not None and token.expires_at.tzinfo is UTC
    assert "rt-plain-0001" not in repr(token) and "at-plain-0001" not in repr(token)


def test_in_memory_store_is_a_token_store() -> None:
    store = InMemoryTokenStore()
    assert isinstance(store, TokenStore)
    assert store.load(LOC) is None
    store.save(LOC, StoredToken(refresh_token=Secret("rt-mem-00001")))
    assert store.load(LOC) is not None and store.saves == 1


def test_static_auth_cannot_refresh() -> None:
    auth = StaticTokenAuth("pit-static-0001")
    http = httpx.AsyncClient()
    assert run(auth.token(http)).get() == "pit-static-0001"
    assert not auth.can_refresh and "pit-static-0001" not in repr(auth)
    with pytest.raises(AuthError):
        run(auth.refresh(http, None))


class TokenEndpoint:
    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.calls: list[dict[str, list[str]]] = []
        self.status = status
        self.delay = delay
        self.n = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        form = parse_qs(request.content.decode())
        self.calls.append(form)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return httpx.Response(self.status, json={"error": "invalid_grant"})
        self.n += 1
        return httpx.Response(200, json={"access_token": f"at-new-{self.n:04d}",
                                         "refresh_token": f"rt-new-{self.n:04d}",
                                         "expires_in": 86399})


def client_for(endpoint: TokenEndpoint) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url="https://services.leadconnectorhq.com",
                             transport=httpx.MockTransport(endpoint))


def oauth(store: Any, seed: str | None = "rt-seed-0001", **kw: Any) -> OAuthTokenAuth:
    kw.setdefault("clock", lambda: T0)
    return OAuthTokenAuth(LOC, "cid-000001", "csecret-000001", store, refresh_token=seed, **kw)


def test_first_use_refreshes_from_seed_and_saves() -> None:
    endpoint = TokenEndpoint()
    store = InMemoryTokenStore()
    auth = oauth(store)
    token = run(auth.token(client_for(endpoint)))
    assert token.get() == "at-new-0001"
    assert endpoint.calls[0]["refresh_token"] == ["rt-seed-0001"]
    saved = store.load(LOC)
    assert saved is not None and saved.refresh_token.get() == "rt-new-0001"
    assert saved.expires_at == T0 + timedelta(seconds=86399)


def test_store_wins_over_seed() -> None:
    endpoint = TokenEndpoint()
    store = InMemoryTokenStore({LOC: StoredToken(refresh_token=Secret("rt-stored-0001"))})
    run(oauth(store).token(client_for(endpoint)))
    assert endpoint.calls[0]["refresh_token"] == ["rt-stored-0001"]


def test_valid_stored_access_token_is_used_without_refresh() -> None:
    endpoint = TokenEndpoint()
    store = InMemoryTokenStore({LOC: StoredToken(
        refresh_token=Secret("rt-stored-0001"), access_token=Secret("at-stored-0001"),
        expires_at=T0 + timedelta(hours=2))})
    assert run(oauth(store).token(client_for(endpoint))).get() == "at-stored-0001"
    assert endpoint.calls == []


def test_expiring_access_token_is_refreshed_early() -> None:
    endpoint = TokenEndpoint()
    store = InMemoryTokenStore({LOC: StoredToken(
        refresh_token=Secret("rt-stored-0001"), access_token=Secret("at-stored-0001"),
        expires_at=T0 + timedelta(minutes=2))})
    assert run(oauth(store).token(client_for(endpoint))).get() == "at-new-0001"


def test_concurrent_refreshes_are_single_flight_across_auth_objects() -> None:
    endpoint = TokenEndpoint(delay=0.01)
    store = InMemoryTokenStore({LOC: StoredToken(refresh_token=Secret("rt-stored-0001"),
                                                 access_token=Secret("at-old-00001"))})
    auths = [oauth(store), oauth(store)]
    stale = Secret("at-old-00001")

    async def go() -> list[Secret]:
        http = client_for(endpoint)
        return await asyncio.gather(*(auths[i % 2].refresh(http, stale) for i in range(10)))

    tokens = run(go())
    assert len(endpoint.calls) == 1
    assert {t.get() for t in tokens} == {"at-new-0001"}


def test_failed_save_means_new_token_is_not_used() -> None:
    class Broken(InMemoryTokenStore):
        def save(self, location_id: str, token: StoredToken) -> None:
            raise OSError("disk full")

    endpoint = TokenEndpoint()
    auth = oauth(Broken())
    with pytest.raises(OSError):
        run(auth.token(client_for(endpoint)))
    assert auth._current is None


def test_async_store_is_supported() -> None:
    class AsyncStore:
        def __init__(self) -> None:
            self.data: dict[str, StoredToken] = {}

        async def load(self, location_id: str) -> StoredToken | None:
            return self.data.get(location_id)

        async def save(self, location_id: str, token: StoredToken) -> None:
            self.data[location_id] = token

    store = AsyncStore()
    run(oauth(store).token(client_for(TokenEndpoint())))
    assert store.data[LOC].refresh_token.get() == "rt-new-0001"


def test_rejected_refresh_is_not_retried_and_is_redacted() -> None:
    endpoint = TokenEndpoint(status=400)
    with pytest.raises(TokenRefreshError) as info:
        run(oauth(InMemoryTokenStore()).token(client_for(endpoint)))
    assert len(endpoint.calls) == 1
    assert "invalid_grant" in str(info.value) and "rt-seed-0001" not in str(info.value)


def test_refresh_retries_5xx_then_succeeds() -> None:
    answers = iter([httpx.Response(502), httpx.Response(200, json={
        "access_token": "at-after-502", "refresh_token": "rt-after-502", "expires_in": 60})])
    sleeps: list[float] = []

    async def fake_sleep(d: float) -> None:
        sleeps.append(d)

    http = httpx.AsyncClient(base_url="https://services.leadconnectorhq.com",
                             transport=httpx.MockTransport(lambda r: next(answers)))
    token = run(oauth(InMemoryTokenStore(), sleep=fake_sleep).token(http))
    assert token.get() == "at-after-502" and len(sleeps) == 1


def test_no_refresh_token_anywhere_is_an_auth_error() -> None:
    with pytest.raises(TokenRefreshError, match="no OAuth refresh token"):
        run(oauth(InMemoryTokenStore(), seed=None).token(client_for(TokenEndpoint())))
