"""HighLevel location auth: static Private Integration Tokens and rotating OAuth tokens.

OAuth refresh tokens rotate: each refresh returns a new one and the old one stops working.
So the new pair is saved through a `TokenStore` *before* the new access token is used, and
refreshes for one location are single-flight (one asyncio lock per location per loop).
A refresh that fails says, in one line, which location, which store and what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import httpx

from mailsync.clients.messages import (
    BODY_CAP,
    cannot_reach,
    error_message,
    is_unreachable,
    one_line,
    transport_problem,
)
from mailsync.redact import MASK, Secret, as_secret, get_logger, redact
from mailsync.store.tokens import StoredToken

log = get_logger("mailsync.auth")


class AuthError(Exception):
    """Fatal for a location or account: its credentials do not work. Not retried."""


class RefreshFailure(StrEnum):
    """Why an OAuth refresh failed, for callers that act on it."""

    grant_refused = "grant_refused"
    """HighLevel refused the refresh token (invalid_grant): already used, or revoked."""
    no_refresh_token = "no_refresh_token"
    """Neither the configuration nor the store has a refresh token."""
    client_refused = "client_refused"
    """HighLevel refused the OAuth app's client id or secret."""
    unreachable = "unreachable"
    """The token endpoint could not be reached."""
    failed = "failed"
    """Anything else: 5xx after retries, no answer, an unreadable answer."""


class TokenRefreshError(AuthError):
    """The OAuth refresh failed (no refresh token, rejected grant, or no answer).

    The message is one line naming the location and what to do; `kind` and `http_status`
    are the same facts typed.
    """

    def __init__(self, message: str, *, kind: RefreshFailure = RefreshFailure.failed,
                 http_status: int | None = None) -> None:
        super().__init__(redact(message))
        self.kind = kind
        self.http_status = http_status


def location_label(location_id: str, name: str | None = None) -> str:
    """How messages name a location: `location Boston (loc-1)`, or `location loc-1`."""
    return f"location {name} ({location_id})" if name else f"location {location_id}"


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


@runtime_checkable
class DescribedTokenStore(Protocol):
    """A `TokenStore` that can say which store it is, for messages (optional)."""

    def describe(self, location_id: str) -> str:
        """A short description: the store's identity and when it last saved the tokens."""
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

    def describe(self, location_id: str) -> str:
        """An in-memory store has no identity beyond this process."""
        held = "holds" if location_id in self.tokens else "holds no"
        return (f"an in-memory token store (this process only) that {held} tokens for this "
                "location")


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


class TokenSource(StrEnum):
    """Where a refresh token came from."""

    store = "store"
    config = "config"


@dataclass(frozen=True)
class _EndpointFailure:
    """How a call to the token endpoint failed, as facts (the words come later)."""

    kind: RefreshFailure
    http_status: int | None
    detail: str
    attempts: int


_CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client"})


def _answer_failure(response: httpx.Response, attempts: int) -> _EndpointFailure:
    """What a non-200 answer of the token endpoint means."""
    code = _oauth_error_code(response)
    if code == "invalid_grant":
        kind = RefreshFailure.grant_refused
    elif code in _CLIENT_ERRORS or response.status_code == 401:
        kind = RefreshFailure.client_refused
    else:
        kind = RefreshFailure.failed
    return _EndpointFailure(kind, response.status_code,
                            f"HTTP {response.status_code}: {_token_error(response)}", attempts)


def _transport_failure(exc: httpx.TransportError, http: httpx.AsyncClient,
                       attempts: int) -> _EndpointFailure:
    """What a transport error on the way to the token endpoint means."""
    if not is_unreachable(exc):
        return _EndpointFailure(RefreshFailure.failed, None, transport_problem(exc), attempts)
    try:
        url = exc.request.url
    except RuntimeError:  # raised without a request attached
        url = http.base_url
    where = cannot_reach("the HighLevel OAuth token endpoint", url, exc)
    return _EndpointFailure(RefreshFailure.unreachable, None, where, attempts)


_USED_ELSEWHERE = ("rotated by another mailsync store or by another app using the same OAuth "
                   "app")


def grant_refused_message(label: str, refused: list[TokenSource], config_source: str,
                          store: str) -> str:
    """One line for refresh tokens HighLevel refused (invalid_grant): whose, and what to do."""
    if refused == [TokenSource.config]:
        whose = (f"the refresh token configured in {config_source} was already used "
                 f"({_USED_ELSEWHERE}) or revoked, and this store holds none")
    elif TokenSource.config in refused:
        whose = (f"the refresh token this store holds, and the one configured in "
                 f"{config_source}, were already used ({_USED_ELSEWHERE})")
    else:
        whose = f"the refresh token this store holds was already used ({_USED_ELSEWHERE})"
    return (f"{label}: HighLevel refused the OAuth refresh token (invalid_grant): {whose}. "
            "Point this deployment at the store that holds the newest refresh token, or "
            f"re-authorise the app for this location and set the new refresh token in "
            f"{config_source}. This is {store}.")


def endpoint_failure_message(label: str, failure: _EndpointFailure) -> str:
    """One line for a refresh that failed for another reason than a refused grant."""
    if failure.kind is RefreshFailure.client_refused:
        return (f"{label}: HighLevel refused the OAuth app's client id or secret "
                f"({failure.detail}): check the client_id and client_secret configured for "
                "this location")
    tries = "1 attempt" if failure.attempts == 1 else f"{failure.attempts} attempts"
    return (f"{label}: OAuth token refresh failed: {failure.detail} ({tries}); the stored "
            "tokens are unchanged and the next run tries again")


class OAuthTokenAuth:
    """OAuth location tokens with single-flight refresh and rotation saved before use.

    `refresh_token` seeds the store on first use; once a rotated token is stored, the store
    wins (the seed is then already spent), unless HighLevel refuses the stored one: then a
    different configured token is tried once (an operator re-authorised the app and set it).
    `location_name` and `refresh_token_source` (where the seed is configured, e.g.
    `env HL_REFRESH_BOSTON`) only make messages say which location and where to act.
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
        location_name: str | None = None,
        refresh_token_source: str | None = None,
    ) -> None:
        self.location_id = location_id
        self.location_name = location_name
        self.refresh_token_source = (refresh_token_source
                                     or "the location's configured refresh_token variable")
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
        self._refused: list[Secret] = []  # refresh tokens HighLevel called invalid_grant
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"OAuthTokenAuth(location_id={self.location_id!r})"

    @property
    def label(self) -> str:
        """How messages name the location."""
        return location_label(self.location_id, self.location_name)

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
            adopted = self._adopt(stored, stale)
            if adopted is not None:
                return adopted
            new = await self._rotate(http, stored)
            # Saved before first use: if saving fails, the rotated token must not be used,
            # or the next run would hold only a dead refresh token.
            await _maybe_await(self._store.save(self.location_id, new))
            self._current = new
            self.refreshes += 1
            log.info("refreshed the OAuth access token for %s", self.label)
            assert new.access_token is not None
            return new.access_token

    def _adopt(self, stored: StoredToken | None, stale: Secret | None) -> Secret | None:
        """A usable access token other than `stale`, already at hand, or None."""
        for candidate in (self._current, stored):
            if self._usable(candidate) and candidate is not None:
                access = candidate.access_token
                if access is not None and access != stale:
                    self._current = candidate
                    return access
        return None

    def _candidates(self, stored: StoredToken | None) -> list[tuple[TokenSource, Secret]]:
        """Refresh tokens to try, in order: the stored one, then a different configured one."""
        found: list[tuple[TokenSource, Secret]] = []
        if stored is not None:
            found.append((TokenSource.store, stored.refresh_token))
        if self._seed is not None and (stored is None or self._seed != stored.refresh_token):
            found.append((TokenSource.config, self._seed))
        return found

    async def _rotate(self, http: httpx.AsyncClient, stored: StoredToken | None) -> StoredToken:
        """Spend a refresh token for a new pair, or raise one clear `TokenRefreshError`."""
        candidates = self._candidates(stored)
        if not candidates:
            raise TokenRefreshError(await self._no_token_message(),
                                    kind=RefreshFailure.no_refresh_token)
        refused: list[TokenSource] = []
        last_status: int | None = None
        for source, refresh_token in candidates:
            if refresh_token not in self._refused:  # refused already: never spend a call on it
                result = await self._call_token_endpoint(http, refresh_token)
                if isinstance(result, StoredToken):
                    return result
                if result.kind is not RefreshFailure.grant_refused:
                    raise TokenRefreshError(endpoint_failure_message(self.label, result),
                                            kind=result.kind, http_status=result.http_status)
                self._refused.append(refresh_token)
                last_status = result.http_status
            refused.append(source)
        message = grant_refused_message(self.label, refused, self.refresh_token_source,
                                        await self._store_description())
        raise TokenRefreshError(message, kind=RefreshFailure.grant_refused,
                                http_status=last_status)

    async def _no_token_message(self) -> str:
        return (f"{self.label}: no OAuth refresh token: {self.refresh_token_source} is not set "
                "and this store holds none for the location. Authorise the app for this "
                f"location and set its refresh token in {self.refresh_token_source}. This is "
                f"{await self._store_description()}.")

    async def _store_description(self) -> str:
        if not isinstance(self._store, DescribedTokenStore):
            return "a token store that does not describe itself"
        try:
            text = await _maybe_await(self._store.describe(self.location_id))
        except Exception as exc:  # a message about one failure must not fail on another
            return f"its description could not be read ({type(exc).__name__})"
        return one_line(text, BODY_CAP)

    async def _call_token_endpoint(
        self, http: httpx.AsyncClient, refresh_token: Secret
    ) -> StoredToken | _EndpointFailure:
        """The new pair, or how the endpoint failed (after retrying what may be retried)."""
        form = {
            "client_id": self._client_id.get(),
            "client_secret": self._client_secret.get(),
            "grant_type": "refresh_token",
            "refresh_token": refresh_token.get(),
            "user_type": "Location",
        }
        failure = _EndpointFailure(RefreshFailure.failed, None, "no attempt made", 0)
        for attempt in range(1, self._max_attempts + 1):
            try:
                # HighLevel returns the same new token to repeated refreshes within 30 s, so
                # retrying after a lost answer is safe (and the only way to learn the token).
                response = await http.post(self._token_path, data=form,
                                           headers={"Accept": "application/json"})
            except httpx.TransportError as exc:
                failure = _transport_failure(exc, http, attempt)
            else:
                if response.status_code == 200:
                    return self._parse(response, refresh_token)
                failure = _answer_failure(response, attempt)
                if response.status_code < 500 and response.status_code != 429:
                    break
            if attempt < self._max_attempts:
                await self._sleep(min(8.0, 0.5 * 2**attempt) * (0.5 + random.random() / 2))
        return failure

    def _parse(self, response: httpx.Response, old_refresh: Secret) -> StoredToken:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not body.get("access_token"):
            raise TokenRefreshError(
                f"{self.label}: the OAuth token answer carried no access_token; the stored "
                "tokens are unchanged and the next run tries again", http_status=200)
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


def _oauth_error_code(response: httpx.Response) -> str | None:
    """The OAuth `error` code of an answer (`invalid_grant`, ...), or None."""
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("error") if isinstance(body, dict) else None
    return code.strip().lower() if isinstance(code, str) else None


def _token_error(response: httpx.Response) -> str:
    """The token endpoint's words, each distinct part once (`invalid_grant: ...`)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    parts: list[str] = []
    if isinstance(body, dict):
        for key in ("error", "error_description", "message"):
            value = body.get(key)
            if isinstance(value, str) and value.strip() and value.strip() not in parts:
                parts.append(value.strip())
    return one_line(": ".join(parts)) if parts else error_message(response)
