"""HighLevel (LeadConnector) API v2 client for one location: tags, notes, contacts.

Every call returns an `Outcome`; only a 401 that survives a token refresh (or any 401 on a
static token) raises `HighLevelAuthError`, because it stops the whole location.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from mailsync.clients.auth import (
    AuthError,
    HighLevelAuth,
    RefreshFailure,
    StaticTokenAuth,
    TokenRefreshError,
    location_label,
)
from mailsync.clients.http import (
    DEFAULT_CONNECTIONS,
    DEFAULT_TIMEOUT,
    ApiClient,
    CallStatus,
    Outcome,
    Sleep,
)
from mailsync.clients.messages import describe_status
from mailsync.clients.ratelimit import RateLimitSnapshot, WindowPacer, highlevel_pacer
from mailsync.redact import Secret, redact

API_VERSION = "2021-07-28"
DEFAULT_DAILY_RESERVE = 1000


class HighLevelError(Exception):
    """A HighLevel problem that is not a per-call outcome."""


class HighLevelAuthError(HighLevelError, AuthError):
    """The location's token was refused (after one refresh, for OAuth), or no token could
    be had (the OAuth refresh failed). Fatal for the location. `http_status` is the refusing
    answer's status, when there was one; `refresh_failure` says why a refresh failed (None
    when the API refused the token itself)."""

    def __init__(self, message: str, *, http_status: int | None = None,
                 refresh_failure: RefreshFailure | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.refresh_failure = refresh_failure


def _contact_path(contact_id: str, suffix: str = "") -> str:
    if not isinstance(contact_id, str) or not contact_id.strip():
        raise ValueError("contact_id must be a non-empty string")
    # Quoted so an odd id can never reach another endpoint.
    return f"/contacts/{quote(contact_id, safe='')}{suffix}"


def _tag_list(tags: Sequence[str]) -> list[str]:
    if isinstance(tags, str):
        raise TypeError("tags must be a sequence of strings, not one string")
    cleaned = [t for t in tags if isinstance(t, str) and t.strip()]
    if not cleaned or len(cleaned) != len(tags):
        raise ValueError("tags must be a non-empty list of non-empty strings")
    return cleaned


# HighLevel's words for a contact that is not there; seen as 400 and 422 as well as 404.
_GONE = re.compile(r"contact.{0,60}\b(not\s+found|does\s*n[o']t\s+exist|deleted|no\s+longer)"
                   r"|(no|unknown)\s+contact\b", re.I | re.S)


def _mark_gone(out: Outcome) -> Outcome:
    """Flag a rejected contact-scoped call whose contact HighLevel does not know."""
    if out.status != CallStatus.rejected:
        return out
    gone = out.http_status == 404 or (out.http_status in (400, 422)
                                      and bool(_GONE.search(out.reason)))
    return out.model_copy(update={"contact_gone": True}) if gone else out


def _field(data: object, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None


class HighLevelClient(ApiClient):
    """One location's HighLevel client. Concurrent use from many coroutines is expected.

    `auth` is a `StaticTokenAuth`/`OAuthTokenAuth`, or a plain token (Private Integration
    Token). Writes are refused with outcome `deferred` once the day's remaining requests
    fall to `daily_reserve`. `location_name` (the configured name) is how messages name the
    location, beside its id. `connections` bounds the pool: as many as callers send at once.
    """

    service = "HighLevel"

    def __init__(
        self,
        base_url: str,
        location_id: str,
        auth: HighLevelAuth | Secret | str,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        pacer: WindowPacer | None = None,
        daily_reserve: int = DEFAULT_DAILY_RESERVE,
        *,
        max_attempts: int = 5,
        max_retry_after: float = 120.0,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        location_name: str | None = None,
        connections: int = DEFAULT_CONNECTIONS,
    ) -> None:
        if not location_id:
            raise ValueError("location_id is required")
        self.pacer: WindowPacer = pacer if pacer is not None else highlevel_pacer(location_id)
        super().__init__(
            base_url,
            transport=transport,
            timeout=timeout,
            max_attempts=max_attempts,
            max_retry_after=max_retry_after,
            sleep=sleep,
            rng=rng,
            headers={"Version": API_VERSION},
            pacer=self.pacer,
            daily_reserve=daily_reserve,
            connections=connections,
        )
        self.location_id = location_id
        self.location_name = location_name
        self.auth: HighLevelAuth = (
            StaticTokenAuth(auth) if isinstance(auth, Secret | str) else auth
        )

    def __repr__(self) -> str:
        return f"HighLevelClient(location_id={self.location_id!r}, base_url={self.base_url!r})"

    @property
    def subject(self) -> str:
        """`location Boston (loc-1)`, or `location loc-1` without a configured name."""
        return location_label(self.location_id, self.location_name)

    @property
    def rate_limit(self) -> RateLimitSnapshot:
        """The last `X-RateLimit-*` numbers seen for this location."""
        return self.pacer.snapshot

    # -- auth -----------------------------------------------------------------------------

    async def _auth_headers(self) -> dict[str, str]:
        try:
            token = await self.auth.token(self.http)
        except AuthError as exc:
            raise self._auth_failed(exc) from exc
        return {"Authorization": f"Bearer {token.get()}"}

    def _auth_failed(self, exc: AuthError) -> HighLevelAuthError:
        # One exception type for callers, whichever step (token, refresh) failed; the auth's
        # own message already names the location and says what to do.
        if isinstance(exc, HighLevelAuthError):
            return exc
        if isinstance(exc, TokenRefreshError):
            return HighLevelAuthError(str(exc), http_status=exc.http_status,
                                      refresh_failure=exc.kind)
        return HighLevelAuthError(redact(f"{self.subject}: {exc}"))

    async def _reauthorize(self, response: httpx.Response) -> bool:
        if not self.auth.can_refresh:
            return False
        # The token this very request carried: concurrent callers that hit 401 with the
        # same token then share one refresh (the auth adopts a token that already changed).
        sent = response.request.headers.get("Authorization", "").removeprefix("Bearer ")
        try:
            await self.auth.refresh(self.http, Secret(sent) if sent else None)
        except AuthError as exc:
            raise self._auth_failed(exc) from exc
        return True

    def _refused(self, response: httpx.Response) -> Exception:
        return HighLevelAuthError(
            redact(f"HighLevel refused the token for {self.subject}: "
                   f"{describe_status(response, self.service)}"),
            http_status=response.status_code,
        )

    # -- endpoints ------------------------------------------------------------------------

    async def add_tags(self, contact_id: str, tags: Sequence[str]) -> Outcome:
        """Add tags; `data` is the contact's full tag list as returned."""
        out = await self.send(
            "POST", _contact_path(contact_id, "/tags"), idempotent=True, write=True,
            json={"tags": _tag_list(tags)},
        )
        return self._tags_result(_mark_gone(out))

    async def remove_tags(self, contact_id: str, tags: Sequence[str]) -> Outcome:
        """Remove tags (DELETE with a JSON body); `data` is the remaining tag list."""
        out = await self.send(
            "DELETE", _contact_path(contact_id, "/tags"), idempotent=True, write=True,
            json={"tags": _tag_list(tags)},
        )
        return self._tags_result(_mark_gone(out))

    @staticmethod
    def _tags_result(out: Outcome) -> Outcome:
        if not out.ok:
            return out
        tags = _field(out.data, "tags")
        return out.model_copy(update={"data": tags if isinstance(tags, list) else None})

    async def create_note(
        self,
        contact_id: str,
        body: str,
        *,
        title: str | None = None,
        user_id: str | None = None,
    ) -> Outcome:
        """Create a note; `remote_id` is the note id. Never retried once it may have been sent."""
        if not isinstance(body, str) or not body.strip():
            raise ValueError("a note needs a non-empty body")
        payload: dict[str, Any] = {"body": body}
        if title is not None:
            payload["title"] = title
        if user_id is not None:
            payload["userId"] = user_id
        out = await self.send(
            "POST", _contact_path(contact_id, "/notes"), idempotent=False, write=True,
            json=payload,
        )
        if not out.ok:
            return _mark_gone(out)
        note = _field(out.data, "note")
        note_id = _field(note, "id")
        return out.model_copy(
            update={
                "data": note if isinstance(note, dict) else out.data,
                "remote_id": str(note_id) if note_id else None,
            }
        )

    async def list_notes(self, contact_id: str) -> Outcome:
        """All notes on a contact; `data` is the list of note dicts."""
        out = await self.send("GET", _contact_path(contact_id, "/notes"), idempotent=True)
        if not out.ok:
            return _mark_gone(out)
        notes = out.data if isinstance(out.data, list) else _field(out.data, "notes")
        return out.model_copy(update={"data": notes if isinstance(notes, list) else []})

    async def get_contact(self, contact_id: str) -> Outcome:
        """One contact; `data` is the contact dict, `remote_id` its id."""
        out = await self.send("GET", _contact_path(contact_id), idempotent=True)
        return self._contact_result(_mark_gone(out))

    async def find_contact(self, email: str | None = None, phone: str | None = None) -> Outcome:
        """The location's contact with this email, else this phone; `data` None if neither."""
        queries = [("email", email), ("number", phone)]
        queries = [(k, v.strip()) for k, v in queries if v and v.strip()]
        if not queries:
            raise ValueError("find_contact needs an email or a phone number")
        attempts = 0
        for key, value in queries:
            out = await self.send(
                "GET", "/contacts/search/duplicate", idempotent=True,
                params={"locationId": self.location_id, key: value},
            )
            attempts += out.attempts
            if not out.ok:
                return out.model_copy(update={"attempts": attempts})
            found = self._contact_result(out)
            if found.data:
                return found.model_copy(update={"attempts": attempts})
        return Outcome(
            status=CallStatus.ok, http_status=200, reason="no contact with that email or phone",
            attempts=attempts,
        )

    async def upsert_contact(self, fields: Mapping[str, Any]) -> Outcome:
        """Create or update a contact (never with tags: upsert replaces them all).

        `remote_id` is the contact id; `data` the whole answer (`new`, `contact`, ...).
        """
        if any(k.casefold() == "tags" for k in fields):
            raise ValueError("upsert replaces every tag on the contact: use add_tags instead")
        payload = dict(fields)
        if payload.setdefault("locationId", self.location_id) != self.location_id:
            raise ValueError("fields['locationId'] is another location")
        out = await self.send(
            "POST", "/contacts/upsert", idempotent=False, write=True, json=payload
        )
        if not out.ok:
            return out
        contact_id = _field(_field(out.data, "contact"), "id")
        return out.model_copy(update={"remote_id": str(contact_id) if contact_id else None})

    @staticmethod
    def _contact_result(out: Outcome) -> Outcome:
        if not out.ok:
            return out
        # A 200 may carry `contact` missing, null or a dict.
        contact = _field(out.data, "contact")
        if not isinstance(contact, dict) or not contact:
            return out.model_copy(update={"data": None})
        contact_id = contact.get("id")
        return out.model_copy(
            update={"data": contact, "remote_id": str(contact_id) if contact_id else None}
        )
