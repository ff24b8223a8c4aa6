"""The shared HTTP base of both API clients: transport, timeouts, retries, outcomes.

Each endpoint method in a subclass only declares its shape (method, path, idempotency,
how to read the answer); sending, pacing hooks, auth hooks, retries with backoff and
jitter, and the classification of every result live here, once.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Literal, Self

import httpx
from pydantic import BaseModel, ConfigDict

from mailsync.redact import get_logger, redact

log = get_logger("mailsync.http")

DEFAULT_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
"""Connect 5 s; read, write and pool 15 s."""

Status = Literal["ok", "rejected", "failed", "unknown", "deferred"]
Verdict = Literal["ok", "retry", "rejected", "unknown", "unauthorized"]
Sleep = Callable[[float], Awaitable[None]]


class Outcome(BaseModel):
    """How one API call ended.

    * ok: done; `remote_id`/`data` carry what the server returned.
    * rejected: a 4xx (not 429); the request was wrong or the target is missing.
    * failed: retries spent on 429/5xx/network; nothing is known to have happened.
    * unknown: a non-idempotent write was sent and no answer came; it may have happened.
    * deferred: not sent (daily quota nearly spent); try again later.
    """

    model_config = ConfigDict(frozen=True)

    status: Status
    http_status: int | None = None
    reason: str = ""
    remote_id: str | None = None
    data: dict[str, Any] | list[Any] | None = None
    attempts: int = 0
    contact_gone: bool = False
    """HighLevel said the contact the call named does not exist (404, or a 400/422 whose
    message says so): a cached link to it is stale."""

    @property
    def ok(self) -> bool:
        """Whether the call succeeded."""
        return self.status == "ok"

    def __repr__(self) -> str:
        # `data` is the server's body, which may echo anything we sent.
        return redact(super().__repr__())

    def __str__(self) -> str:
        return redact(super().__str__())


# Errors raised before a single byte of the request can have reached the server.
_NOTHING_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.LocalProtocolError,
    httpx.UnsupportedProtocol,
)


def classify(result: httpx.Response | Exception, *, idempotent: bool) -> Verdict:
    """The one place that decides what a response or transport error means.

    A request that may have reached the server (read timeout, connection cut or reset,
    write error) is retried only if it is idempotent; otherwise its fate is `unknown`,
    because HighLevel takes no idempotency key and a blind retry could duplicate a note.
    An answer from HighLevel itself means it decided, so a 5xx or 429 is retried either way;
    but a 504 comes from a gateway that gave up waiting on it, which may still finish the
    write: for a non-idempotent request that is `unknown` too.
    """
    if isinstance(result, httpx.Response):
        code = result.status_code
        if 200 <= code < 300:
            return "ok"
        if code == 401:
            return "unauthorized"
        if code == 504 and not idempotent:
            return "unknown"
        if code == 429 or code >= 500:
            return "retry"
        return "rejected"
    if isinstance(result, _NOTHING_SENT):
        return "retry"
    if isinstance(result, httpx.RequestError):
        return "retry" if idempotent else "unknown"
    raise TypeError(f"cannot classify {type(result).__name__}")


def check_base_url(url: str) -> str:
    """Return `url` if it is https, or plain http on a loopback host; else ValueError."""
    parsed = httpx.URL(url)
    if parsed.userinfo:
        raise ValueError("base URL must not carry credentials")
    if parsed.scheme == "https" and parsed.host:
        return url
    if parsed.scheme == "http" and _is_loopback(parsed.host):
        return url
    raise ValueError(
        f"base URL must use https (plain http only for loopback hosts): got {redact(url)!r}"
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """`Retry-After` in seconds (delta or HTTP date), or None when absent or unreadable."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_message(response: httpx.Response) -> str:
    """The server's own words for an error answer, in one redacted line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    text = ""
    if isinstance(body, dict):
        message = body.get("message", body.get("Message"))
        error = body.get("error", body.get("Error"))
        if isinstance(error, dict):
            message = message or error.get("message") or error.get("Message")
            error = None
        if isinstance(message, list):
            text = "; ".join(str(m) for m in message)
        elif message:
            text = str(message)
        elif error:
            text = str(error)
    if not text:
        text = " ".join(response.text.split())[:300]
    return redact(text)


def describe_status(response: httpx.Response) -> str:
    """`HTTP 422 Unprocessable Entity: <server message>`."""
    phrase = response.reason_phrase or ""
    head = f"HTTP {response.status_code} {phrase}".rstrip()
    message = error_message(response)
    return f"{head}: {message}" if message else head


def parse_body(response: httpx.Response) -> dict[str, Any] | list[Any] | None:
    """The JSON body, or None when there is none or it is not JSON."""
    if not response.content:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict | list) else None


class ApiClient:
    """An httpx.AsyncClient with retries, backoff with jitter, and outcome classification.

    Subclasses override the hooks (`_before_attempt`, `_auth_headers`, `_after_response`,
    `_on_throttled`, `_on_unauthorized`, `_unauthorized_error`) and call `send`.
    """

    service = "API"

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 20.0,
        max_retry_after: float = 120.0,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        check_base_url(base_url)
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = base_url
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_retry_after = max_retry_after
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.requests_sent = 0
        self.http = httpx.AsyncClient(
            base_url=base_url,
            transport=transport,
            timeout=timeout,
            headers={"Accept": "application/json", **(headers or {})},
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={redact(self.base_url)!r})"

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- hooks ----------------------------------------------------------------------------

    async def _before_attempt(self, write: bool) -> Outcome | float | None:
        """Pace; returns a ticket for `_attempt_done` (the pacer's send time), or an Outcome
        instead to not send at all (e.g. `deferred`)."""
        return None

    async def _auth_headers(self) -> dict[str, str]:
        return {}

    def _attempt_done(self, ticket: float | None) -> None:
        """The attempt let through by `_before_attempt` has ended, however it ended."""

    def _after_response(self, response: httpx.Response) -> None:
        """Learn from every answer (rate-limit headers)."""

    def _on_throttled(self, retry_after: float | None) -> None:
        """A 429 arrived: slow everyone sharing the budget."""

    async def _on_unauthorized(self, response: httpx.Response) -> bool:
        """A 401 arrived: return True to send the request once more (after a refresh)."""
        return False

    def _unauthorized_error(self, response: httpx.Response) -> Exception:
        return PermissionError(redact(f"{self.service}: {describe_status(response)}"))

    # -- the loop -------------------------------------------------------------------------

    def backoff(self, retry: int) -> float:
        """Delay before retry number `retry` (1-based): exponential, capped, half jittered."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** (retry - 1))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    async def send(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        write: bool = False,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: Mapping[str, str] | None = None,
    ) -> Outcome:
        """Send one logical request (retrying as its idempotency allows) and classify it."""
        attempts = 0
        tries = 0  # attempts that count towards max_attempts (not the one after a refresh)
        reauthed = False
        problem = ""
        last_status: int | None = None
        while True:
            ticket = await self._before_attempt(write)
            if isinstance(ticket, Outcome):
                return ticket.model_copy(update={"attempts": attempts})
            try:
                headers = await self._auth_headers()
                attempts += 1
                tries += 1
                self.requests_sent += 1
                response = await self.http.request(
                    method, path, params=params, json=json, data=data, headers=headers
                )
            except httpx.RequestError as exc:
                self._attempt_done(ticket)
                verdict = classify(exc, idempotent=idempotent)
                last_status = None
                problem = f"network error {type(exc).__name__}: {redact(exc) or 'no detail'}"
                log.debug("%s %s: %s (attempt %d)", method, path, problem, attempts)
                if verdict == "unknown":
                    return Outcome(
                        status="unknown",
                        reason=f"sent, but no answer ({problem}): it may or may not have "
                        "taken effect",
                        attempts=attempts,
                    )
                delay = self.backoff(tries)
            except BaseException:
                self._attempt_done(ticket)  # cancelled, or a refresh failed: free the place
                raise
            else:
                self._attempt_done(ticket)
                self._after_response(response)
                last_status = response.status_code
                verdict = classify(response, idempotent=idempotent)
                log.debug("%s %s -> %d (attempt %d)", method, path, last_status, attempts)
                if verdict == "ok":
                    return Outcome(
                        status="ok",
                        http_status=last_status,
                        reason="ok",
                        data=parse_body(response),
                        attempts=attempts,
                    )
                if verdict == "unauthorized":
                    if not reauthed and await self._on_unauthorized(response):
                        reauthed = True
                        tries -= 1
                        continue
                    raise self._unauthorized_error(response)
                if verdict == "unknown":
                    return Outcome(
                        status="unknown",
                        http_status=last_status,
                        reason=f"{describe_status(response)}: a gateway gave up waiting; the "
                        "write may or may not have taken effect",
                        attempts=attempts,
                    )
                if verdict == "rejected":
                    return Outcome(
                        status="rejected",
                        http_status=last_status,
                        reason=describe_status(response),
                        data=parse_body(response),
                        attempts=attempts,
                    )
                problem = describe_status(response)
                retry_after = (
                    retry_after_seconds(response.headers) if last_status in (429, 503) else None
                )
                if last_status == 429:
                    self._on_throttled(retry_after)
                if retry_after is not None and retry_after > self.max_retry_after:
                    return Outcome(
                        status="failed",
                        http_status=last_status,
                        reason=f"{problem} (server asked to wait {retry_after:.0f} s, "
                        f"more than the {self.max_retry_after:.0f} s allowed)",
                        attempts=attempts,
                    )
                delay = retry_after if retry_after is not None else self.backoff(tries)
            if tries >= self.max_attempts:
                return Outcome(
                    status="failed",
                    http_status=last_status,
                    reason=f"gave up after {attempts} attempts: {problem}",
                    attempts=attempts,
                )
            log.info(
                "%s %s %s: %s; retrying in %.2f s", self.service, method, path, problem, delay
            )
            await self._sleep(delay)
