"""HighLevel location auth: static Private Integration Tokens and rotating OAuth tokens.

OAuth refresh tokens rotate: each refresh returns a new one and the old one stops working.
So the new pair is saved through a `TokenStore` *before* the new access token is used, and
refreshes for one location are single-flight (one asyncio lock per location per loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

import httpx

from mailsync.redact import MASK, Secret, as_secret, get_logger, redact
from mailsync.store.tokens import StoredToken

log = get_logger("mailsync.auth")


class AuthError(Exception):
    """Fatal for a location or account: its credentials do not work. Not retried."""


class TokenRefreshError(AuthError):
    """The OAuth refresh failed (no refresh token, rejected grant, or no answer)."""


@runtime_checkable
class TokenStore(Protocol):
    """Where rotated OAuth tokens live between runs (implemented over the database).

    Methods may be plain or `async def`; both are awaited correctly.
    """

    def load(self, location_id: str) -> StoredToken | None:
        """The saved tokens for a location, or None."""
        ...

    def save(self, location_id: str, token: StoredToken) -> None:
        """Persist the tokens durably (commit) before returning."""
        ...


class InMemoryTokenStore:
    """A `TokenStore` for tests and one-off runs."""

    def __init__(self, initial: dict[str, StoredToken] | None = None) -> None:
        self.tokens: dict[str, StoredToken] = dict(initial or {})
        self.saves = 0

    def load(self, location_id: str) -> StoredToken | None:
        """The saved tokens, or None."""
        return self.tokens.get(location_id)

    def save(self, location_id: str, token: StoredToken) -> None:
        """Keep the tokens."""
        self.saves += 1
        self.tokens[location_id] = token


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class HighLevelAuth(Protocol):
    """What the HighLevel client needs from an auth scheme."""

    can_refresh: bool

    async def token(self, http: httpx.AsyncClient) -> Secret:
        """The access token to send now."""
        ...

    async def refresh(self, http: httpx.AsyncClient, stale: Secret | None) -> Secret:
        """A fresh token after `stale` drew a 401."""
        ...


class StaticTokenAuth:
    """A Private Integration Token: never refreshed; a 401 is fatal."""

    can_refresh = False

    def __init__(self, token: Secret | str) -> None:
        self._token = as_secret(token)

    async def token(self, http: httpx.AsyncClient) -> Secret:
        """The token."""
        return self._token

    async def refresh(self, http: httpx.AsyncClient, stale: Secret | None) -> Secret:
        """Static tokens cannot be refreshed."""
        raise AuthError("a Private Integration Token cannot be refreshed")

    def __repr__(self) -> str:
        return f"StaticTokenAuth({MASK})"


# One lock per (event loop, location): asyncio locks must not cross loops.
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _refresh_lock(location_id: str) -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    per_loop = _locks.setdefault(loop, {})
    lock = per_loop.get(location_id)
    if lock is None:
        lock = per_loop[location_id] = asyncio.Lock()
    return lock


def _utcnow() -> datetime:
    return datetime.now(UTC)


class OAuthTokenAuth:
    """OAuth location tokens with single-flight refresh and rotation saved before use.

    `refresh_token` seeds the store on first use only; once a rotated token is stored, the
    store wins (the seed is then already spent).
    """

    can_refresh = True

    def __init__(
        self,
        location_id: str,
        client_id: Secret | str,
        client_secret: Secret | str,
        store: TokenStore,
        refresh_token: Secret | str | None = None,
        *,
        token_path: str = "/oauth/token",
        expiry_margin: timedelta = timedelta(minutes=5),
        max_attempts: int = 3,
        clock: Callable[[], datetime] = _utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.location_id = location_id
        self._client_id = as_secret(client_id)
        self._client_secret = as_secret(client_secret)
        self._store = store
        self._seed = as_secret(refresh_token) if refresh_token else None
        self._token_path = token_path
        self._margin = expiry_margin
        self._margin_now = expiry_margin  # shrunk for short-lived tokens (time-scaled sandboxes)
        self._max_attempts = max_attempts
        self._clock = clock
        self._sleep = sleep
        self._current: StoredToken | None = None
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"OAuthTokenAuth(location_id={self.location_id!r})"

    def _usable(self, token: StoredToken | None) -> bool:
        if token is None or token.access_token is None:
            return False
        return token.expires_at is None or self._clock() < token.expires_at - self._margin_now

    async def token(self, http: httpx.AsyncClient) -> Secret:
        """The current access token, loaded from the store or refreshed when missing/expiring."""
        if self._usable(self._current):
            assert self._current is not None and self._current.access_token is not None
            return self._current.access_token
        stale = self._current.access_token if self._current else None
        return await self.refresh(http, stale)

    async def refresh(self, http: httpx.AsyncClient, stale: Secret | None) -> Secret:
        """A new access token, unless another caller already replaced `stale`."""
        async with _refresh_lock(self.location_id):
            # Whoever held the lock before us (this or another client, same store) may have
            # refreshed already: adopt their token instead of spending the refresh token.
            stored = await _maybe_await(self._store.load(self.location_id))
            for candidate in (self._current, stored):
                if (
                    self._usable(candidate)
                    and candidate is not None
                    and candidate.access_token != stale
                ):
                    self._current = candidate
                    assert candidate.access_token is not None
                    return candidate.access_token
            refresh_token = stored.refresh_token if stored else self._seed
            if refresh_token is None:
                raise TokenRefreshError(
                    f"location {self.location_id}: no OAuth refresh token stored or configured"
                )
            new = await self._call_token_endpoint(http, refresh_token)
            # Saved before first use: if saving fails, the rotated token must not be used,
            # or the next run would hold only a dead refresh token.
            await _maybe_await(self._store.save(self.location_id, new))
            self._current = new
            self.refreshes += 1
            log.info("refreshed the OAuth access token for location %s", self.location_id)
            assert new.access_token is not None
            return new.access_token

    async def _call_token_endpoint(
        self, http: httpx.AsyncClient, refresh_token: Secret
    ) -> StoredToken:
        form = {
            "client_id": self._client_id.get(),
            "client_secret": self._client_secret.get(),
            "grant_type": "refresh_token",
            "refresh_token": refresh_token.get(),
            "user_type": "Location",
        }
        problem = "no attempt made"
        for attempt in range(1, self._max_attempts + 1):
            try:
                # HighLevel returns the same new token to repeated refreshes within 30 s, so
                # retrying after a lost answer is safe (and the only way to learn the token).
                response = await http.post(
                    self._token_path,
                    data=form,
                    headers={"Accept": "application/json"},
                )
            except httpx.TransportError as exc:
                problem = f"network error {type(exc).__name__}: {redact(exc)}"
            else:
                if response.status_code == 200:
                    return self._parse(response, refresh_token)
                problem = f"HTTP {response.status_code}: {_token_error(response)}"
                if response.status_code < 500 and response.status_code != 429:
                    break
            if attempt < self._max_attempts:
                await self._sleep(min(8.0, 0.5 * 2**attempt) * (0.5 + random.random() / 2))
        raise TokenRefreshError(
            redact(f"location {self.location_id}: OAuth token refresh failed ({problem})")
        )

    def _parse(self, response: httpx.Response, old_refresh: Secret) -> StoredToken:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not body.get("access_token"):
            raise TokenRefreshError(
                f"location {self.location_id}: OAuth token answer carried no access_token"
            )
        access = Secret(str(body["access_token"]))
        new_refresh = body.get("refresh_token")
        refresh = Secret(str(new_refresh)) if new_refresh else old_refresh
        expires_at = None
        with contextlib.suppress(KeyError, TypeError, ValueError):
            lifetime = timedelta(seconds=float(body["expires_in"]))
            expires_at = self._clock() + lifetime
            # Refresh early, but never so early that a fresh token already looks stale.
            self._margin_now = min(self._margin, lifetime / 10)
        return StoredToken(refresh_token=refresh, access_token=access, expires_at=expires_at)


def _token_error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return redact(response.text[:200])
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("error", "error_description", "message") if body.get(k)]
        if parts:
            return redact(": ".join(parts))
    return redact(str(body)[:200])
