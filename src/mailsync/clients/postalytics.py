"""Postalytics API v1 client (read-only): campaigns, campaign details, event pages.

All reads are GETs, so every 429, 5xx and network error is retried. A 401 raises
`PostalyticsAuthError` naming the account (never the key); anything else that does not
end well raises `PostalyticsError`. Both carry the typed facts (`kind`, `http_status`,
`host`) so a caller can tell an unreachable API from refused credentials without reading
the message.
"""

from __future__ import annotations

import asyncio
import base64
import random
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import httpx

from mailsync.clients.auth import AuthError
from mailsync.clients.http import DEFAULT_TIMEOUT, ApiClient, Outcome, Sleep
from mailsync.clients.messages import REASON_CAP, describe_status, host_port, one_line
from mailsync.clients.ratelimit import FixedRateLimiter, postalytics_limiter
from mailsync.redact import Secret, as_secret, register_secret

MAX_PAGE_SIZE = 100

# Keys under which a list may be wrapped (the events body shape is undocumented).
_LIST_KEYS = (
    "events", "data", "items", "results", "records", "campaigns", "value", "contacts",
    "rows", "list",
)


class PostalyticsFailure(StrEnum):
    """Which way a Postalytics call failed, for callers that act on it."""

    unreachable = "unreachable"
    """No connection could be opened (refused, DNS failure, connect timeout)."""
    refused_credentials = "refused_credentials"
    """Postalytics refused the API key (401)."""
    other = "other"
    """Any other failure: an error answer, retries spent, an unreadable body."""


class PostalyticsError(Exception):
    """A Postalytics call that did not succeed, in one line; `outcome` says how it ended.

    `kind`, `http_status` and `host` (`host:port` of the API, when known) are typed facts
    taken from the outcome unless given.
    """

    def __init__(
        self,
        message: str,
        outcome: Outcome | None = None,
        *,
        kind: PostalyticsFailure | None = None,
        http_status: int | None = None,
        host: str | None = None,
    ) -> None:
        super().__init__(one_line(message, REASON_CAP))
        self.outcome = outcome
        if kind is None:
            kind = (PostalyticsFailure.unreachable if outcome is not None and outcome.unreachable
                    else PostalyticsFailure.other)
        self.kind = kind
        self.http_status = http_status if http_status is not None else (
            outcome.http_status if outcome is not None else None)
        self.host = host


class PostalyticsAuthError(PostalyticsError, AuthError):
    """Postalytics refused the API key (401). Fatal for the account: fix the key."""

    def __init__(self, message: str, outcome: Outcome | None = None, *,
                 http_status: int | None = 401, host: str | None = None) -> None:
        super().__init__(message, outcome, kind=PostalyticsFailure.refused_credentials,
                         http_status=http_status, host=host)


def unwrap_list(body: Any, what: str = "items") -> list[Any]:
    """The list in a body that is a bare list or an object wrapping one under a known key."""
    if body is None:
        return []
    if isinstance(body, dict):
        by_fold = {str(k).casefold(): v for k, v in body.items()}
        for key in _LIST_KEYS:
            value = by_fold.get(key)
            if isinstance(value, list):
                body = value
                break
        else:
            lists = [v for v in body.values() if isinstance(v, list)]
            if len(lists) == 1:
                body = lists[0]
            elif not body or all(v is None for v in by_fold.values()):
                return []
            else:
                raise PostalyticsError(
                    f"Postalytics answered with {what} in an unexpected shape "
                    f"(keys: {', '.join(sorted(map(str, body))[:10])})"
                )
    if not isinstance(body, list):
        raise PostalyticsError(f"Postalytics answered with {what} that are not a list")
    # Items are returned as they came, objects or not: a malformed event must reach the
    # normaliser and be quarantined with its reason, never vanish here.
    return list(body)


class PostalyticsClient(ApiClient):
    """One Postalytics account's client; paced at 3 requests/s per API key, process-wide."""

    service = "Postalytics"

    def __init__(
        self,
        base_url: str,
        api_key: Secret | str,
        account_name: str = "default",
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        limiter: FixedRateLimiter | None = None,
        *,
        max_attempts: int = 6,
        max_retry_after: float = 120.0,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        key = as_secret(api_key)
        if not key.get():
            raise ValueError(f"Postalytics account {account_name!r}: the API key is empty")
        credential = base64.b64encode(f"{key.get()}:".encode()).decode()
        register_secret(credential)
        # Shared by every client of this API key in the process.
        self.limiter = limiter if limiter is not None else postalytics_limiter(key.get())
        super().__init__(
            base_url,
            transport=transport,
            timeout=timeout,
            max_attempts=max_attempts,
            max_retry_after=max_retry_after,
            sleep=sleep,
            rng=rng,
            pacer=self.limiter,
        )
        self.account_name = account_name
        self._authorization = Secret(f"Basic {credential}")

    def __repr__(self) -> str:
        return f"PostalyticsClient(account_name={self.account_name!r}, base_url={self.base_url!r})"

    @property
    def subject(self) -> str:
        """`account 'acme'`."""
        return f"account {self.account_name!r}"

    @property
    def host(self) -> str:
        """`host:port` of the API, for messages."""
        return host_port(self.base_url)

    # -- auth -----------------------------------------------------------------------------

    async def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": self._authorization.get()}

    def _refused(self, response: httpx.Response) -> Exception:
        return PostalyticsAuthError(
            f"Postalytics refused the API key of {self.subject} "
            f"({describe_status(response, self.service)}): check the key configured for this "
            "account",
            http_status=response.status_code, host=self.host,
        )

    # -- endpoints ------------------------------------------------------------------------

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        out = await self.send("GET", path, idempotent=True, params=params)
        if not out.ok:
            raise PostalyticsError(f"Postalytics {self.subject}: GET {path} {out.status}: "
                                   f"{out.reason}", out, host=self.host)
        return out.data

    async def list_campaigns(self) -> list[dict[str, Any]]:
        """All campaigns of the account (each has at least `drop_id`, `name`)."""
        return [c for c in unwrap_list(await self._get("/campaigns"), "campaigns")
                if isinstance(c, dict)]

    async def campaign_details(self, drop_id: str | int) -> dict[str, Any]:
        """One campaign's details (`DirectMailDropId`, `DirectMailName`, `Status`, ...)."""
        body = await self._get(f"/campaigns/{_segment(drop_id)}/details")
        if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
            body = body[0]
        if not isinstance(body, dict):
            raise PostalyticsError(
                f"Postalytics campaign {drop_id}: details are not an object"
            )
        return body

    async def events_page(
        self, drop_id: str | int, page_number: int, page_size: int = MAX_PAGE_SIZE
    ) -> list[Any]:
        """One page (1-based) of a campaign's raw events (normally dicts); `[]` past the end."""
        if page_number < 1:
            raise ValueError("page_number starts at 1")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}")
        body = await self._get(
            f"/campaigns/{_segment(drop_id)}/events",
            params={"PageNumber": str(page_number), "PageSize": str(page_size)},
        )
        return unwrap_list(body, "events")

    async def recipient_events(
        self, drop_id: str | int, contact_id: str | int
    ) -> list[Any]:
        """One recipient's raw events in a campaign (normally dicts)."""
        body = await self._get(
            f"/campaigns/{_segment(drop_id)}/events/{_segment(contact_id)}"
        )
        return unwrap_list(body, "events")


def _segment(value: str | int) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("an id must not be empty")
    return quote(text, safe="")
