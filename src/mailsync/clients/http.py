"""The shared HTTP base of both API clients: the request loop, its verdicts and outcomes.

The loop is small steps, in the manner of httpx's `send` → `_send_handling_auth` →
`_send_single_request`: `_send_single_attempt` paces, authorises and sends once and returns
what happened; `judge_attempt` turns that into a verdict; `_retry_or_stop` decides whether to
try again and after how long. Pacing sits behind the injected `Pacer`, so a subclass only
supplies auth (three hooks) and its endpoints.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import ipaddress
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, Self

import httpx
from pydantic import BaseModel, ConfigDict, field_validator

from mailsync.clients.messages import (
    REASON_CAP,
    cannot_reach,
    describe_status,
    is_unreachable,
    one_line,
    transport_problem,
)
from mailsync.clients.ratelimit import NoPacer, Pacer, QuotaDeferral
from mailsync.clients.transport import SlotTransport, env_proxies
from mailsync.redact import get_logger, redact

log = get_logger("mailsync.http")

DEFAULT_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
"""Connect 5 s; read, write and pool 15 s."""
DEFAULT_CONNECTIONS = 8
"""Connections a client keeps open: as many as its callers send at once (an apply sends at
most 8 per location); more callers wait their turn (`clients.transport`)."""


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings every client shares (httpx's defaults, environment included), built
    once per process: loading the CA bundle costs tens of milliseconds per client otherwise,
    and a run makes a client per campaign and per location."""
    return httpx.create_ssl_context(trust_env=True)

Sleep = Callable[[float], Awaitable[None]]


class CallStatus(StrEnum):
    """How one API call ended (`Outcome.status`); equal to its plain string value."""

    ok = "ok"
    """Done; `remote_id`/`data` carry what the server returned."""
    rejected = "rejected"
    """A 4xx (not 429): the request was wrong or its target is missing."""
    failed = "failed"
    """Retries spent on 429/5xx/network errors: nothing is known to have happened."""
    unknown = "unknown"
    """A non-idempotent write was sent and no answer came: it may have happened."""
    deferred = "deferred"
    """Not sent (the daily quota is nearly spent): try again later."""


class AttemptVerdict(StrEnum):
    """What one attempt's answer, or the transport error instead of one, means."""

    ok = "ok"
    retry = "retry"
    rejected = "rejected"
    unknown = "unknown"
    unauthorized = "unauthorized"


class Outcome(BaseModel):
    """How one API call ended; `status` says which way (see `CallStatus`)."""

    model_config = ConfigDict(frozen=True)

    status: CallStatus
    http_status: int | None = None
    reason: str = ""
    """One line, at most `REASON_CAP` characters, no control characters or secrets."""
    remote_id: str | None = None
    data: dict[str, Any] | list[Any] | None = None
    attempts: int = 0
    contact_gone: bool = False
    """HighLevel said the contact the call named does not exist (404, or a 400/422 whose
    message says so): a cached link to it is stale."""
    unreachable: bool = False
    """The last attempt never reached the server (connection refused, DNS failure, connect
    timeout): the API is unreachable, not this call wrong."""

    @field_validator("reason")
    @classmethod
    def _one_short_line(cls, value: str) -> str:
        return one_line(value, REASON_CAP)

    @property
    def ok(self) -> bool:
        """Whether the call succeeded."""
        return self.status == CallStatus.ok

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


def judge_attempt(result: httpx.Response | Exception, *, idempotent: bool) -> AttemptVerdict:
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
            return AttemptVerdict.ok
        if code == 401:
            return AttemptVerdict.unauthorized
        if code == 504 and not idempotent:
            return AttemptVerdict.unknown
        if code == 429 or code >= 500:
            return AttemptVerdict.retry
        return AttemptVerdict.rejected
    if isinstance(result, _NOTHING_SENT):
        return AttemptVerdict.retry
    if isinstance(result, httpx.RequestError):
        return AttemptVerdict.retry if idempotent else AttemptVerdict.unknown
    raise TypeError(f"cannot judge {type(result).__name__}")


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


def parse_body(response: httpx.Response) -> dict[str, Any] | list[Any] | None:
    """The JSON body, or None when there is none or it is not JSON."""
    if not response.content:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict | list) else None


@dataclass(frozen=True)
class Call:
    """One logical request: what to send, and whether sending it twice is harmless."""

    method: str
    path: str
    idempotent: bool
    write: bool = False
    params: Mapping[str, str] | None = None
    json: Any = None
    data: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Attempt:
    """What one attempt produced: the server's answer, or the transport error instead."""

    result: httpx.Response | httpx.RequestError
    number: int
    """Requests sent for the call so far, this one included."""

    @property
    def response(self) -> httpx.Response | None:
        """The answer, if one came."""
        return self.result if isinstance(self.result, httpx.Response) else None

    @property
    def http_status(self) -> int | None:
        """The answer's status code, if one came."""
        return self.result.status_code if isinstance(self.result, httpx.Response) else None


@dataclass
class _Tally:
    """One call's counts across its attempts."""

    sent: int = 0
    counted: int = 0  # attempts that count towards max_attempts (not the resend after a refresh)
    reauthorized: bool = False


class ApiClient:
    """An httpx.AsyncClient with pacing, retries with backoff and jitter, and outcomes.

    Subclasses supply auth through `_auth_headers`, `_reauthorize` and `_refused`, and call
    `send` from their endpoint methods.
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
        pacer: Pacer | None = None,
        daily_reserve: int = 0,
        connections: int = DEFAULT_CONNECTIONS,
    ) -> None:
        check_base_url(base_url)
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = base_url
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_retry_after = max_retry_after
        self.pacer: Pacer = pacer if pacer is not None else NoPacer()
        self.daily_reserve = daily_reserve
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.requests_sent = 0
        self.throttled = 0  # 429s this client received
        if transport is None and not env_proxies():
            transport = SlotTransport(connections, verify=tls_context())
        self.http = httpx.AsyncClient(
            base_url=base_url,
            transport=transport,
            timeout=timeout,
            headers={"Accept": "application/json", **(headers or {})},
            follow_redirects=False,
            verify=tls_context(),
            # httpx's own pool, used only when the environment names a proxy.
            limits=httpx.Limits(max_connections=connections,
                                max_keepalive_connections=connections),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={redact(self.base_url)!r})"

    @property
    def subject(self) -> str:
        """Whom the client acts for, in messages (a location, an account)."""
        return self.service

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

    # -- auth hooks -----------------------------------------------------------------------

    async def _auth_headers(self) -> dict[str, str]:
        """Headers that authorise the next attempt."""
        return {}

    async def _reauthorize(self, response: httpx.Response) -> bool:
        """A 401 arrived: return True to send the request once more (after a refresh)."""
        return False

    def _refused(self, response: httpx.Response) -> Exception:
        """The error to raise for a 401 that no refresh cures."""
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
        """Send one logical request (retrying as its idempotency allows) and say how it ended."""
        call = Call(method, path, idempotent, write, params, json, data)
        tally = _Tally()
        while True:
            deferral = self.pacer.defer_write(self.daily_reserve) if write else None
            if deferral is not None:
                return self._deferred(deferral, tally.sent)
            attempt = await self._send_single_attempt(call, tally)
            verdict = judge_attempt(attempt.result, idempotent=idempotent)
            if verdict is AttemptVerdict.unauthorized:
                await self._handle_unauthorized(attempt, tally)
                continue
            if verdict is not AttemptVerdict.retry:
                return self._settled(attempt, verdict)
            delay = self._retry_or_stop(attempt, tally)
            if isinstance(delay, Outcome):
                return delay
            log.info("%s %s %s: %s; retrying in %.2f s",
                     self.service, method, path, self._problem(attempt), delay)
            await self._sleep(delay)

    async def _send_single_attempt(self, call: Call, tally: _Tally) -> Attempt:
        """Pace, authorise and send once: the answer, or the transport error instead."""
        result: httpx.Response | httpx.RequestError
        ticket = await self.pacer.acquire()
        try:
            headers = await self._auth_headers()
            tally.sent += 1
            tally.counted += 1
            self.requests_sent += 1
            result = await self.http.request(call.method, call.path, params=call.params,
                                             json=call.json, data=call.data, headers=headers)
        except httpx.RequestError as exc:
            result = exc
        finally:
            # However the attempt ended (cancelled, or a refresh failed too): free the place.
            self.pacer.release(ticket)
        attempt = Attempt(result, tally.sent)
        if isinstance(result, httpx.Response):
            self.pacer.observe(result.headers)
        if log.isEnabledFor(logging.DEBUG):  # the arguments cost more than the check
            log.debug("%s %s: %s (attempt %d)", call.method, call.path,
                      attempt.http_status or self._problem(attempt), attempt.number)
        return attempt

    async def _handle_unauthorized(self, attempt: Attempt, tally: _Tally) -> None:
        """One refresh and resend per call for a refused token; else the refusal is raised."""
        response = attempt.response
        assert response is not None
        if tally.reauthorized or not await self._reauthorize(response):
            raise self._refused(response)
        tally.reauthorized = True
        tally.counted -= 1  # the resend after a refresh is not a retry

    def _settled(self, attempt: Attempt, verdict: AttemptVerdict) -> Outcome:
        """The outcome of an attempt that ends the call (ok, rejected or unknown)."""
        response = attempt.response
        if response is None:
            return Outcome(status=CallStatus.unknown, attempts=attempt.number,
                           reason=f"sent, but no answer ({self._problem(attempt)}): it may or "
                           "may not have taken effect")
        if verdict is AttemptVerdict.ok:
            return Outcome(status=CallStatus.ok, http_status=response.status_code, reason="ok",
                           data=parse_body(response), attempts=attempt.number)
        described = describe_status(response, self.service)
        if verdict is AttemptVerdict.unknown:
            return Outcome(status=CallStatus.unknown, http_status=response.status_code,
                           attempts=attempt.number,
                           reason=f"{described}: a gateway gave up waiting; the write may or "
                           "may not have taken effect")
        return Outcome(status=CallStatus.rejected, http_status=response.status_code,
                       reason=described, data=parse_body(response), attempts=attempt.number)

    def _retry_or_stop(self, attempt: Attempt, tally: _Tally) -> float | Outcome:
        """The delay before trying again, or the `failed` outcome that ends the call.

        `Retry-After` is honoured only when present (on a 429 or 503) and only up to
        `max_retry_after`; otherwise the delay is backoff with jitter.
        """
        code = attempt.http_status
        response = attempt.response
        retry_after = (retry_after_seconds(response.headers)
                       if response is not None and code in (429, 503) else None)
        if code == 429:
            self._throttled(retry_after)
        if retry_after is not None and retry_after > self.max_retry_after:
            return Outcome(status=CallStatus.failed, http_status=code, attempts=attempt.number,
                           reason=f"{self._problem(attempt)} (server asked to wait "
                           f"{retry_after:.0f} s, more than the {self.max_retry_after:.0f} s "
                           "allowed)")
        if tally.counted >= self.max_attempts:
            return self._gave_up(attempt)
        return retry_after if retry_after is not None else self.backoff(tally.counted)

    def _gave_up(self, attempt: Attempt) -> Outcome:
        """`failed` after the last allowed attempt; says so when the API was unreachable."""
        error = attempt.result
        if isinstance(error, httpx.RequestError) and is_unreachable(error):
            reason = (f"{cannot_reach(self.service, self.base_url, error)} "
                      f"({type(error).__name__}, {attempt.number} attempts)")
            return Outcome(status=CallStatus.failed, reason=reason, attempts=attempt.number,
                           unreachable=True)
        return Outcome(status=CallStatus.failed, http_status=attempt.http_status,
                       reason=f"gave up after {attempt.number} attempts: "
                       f"{self._problem(attempt)}", attempts=attempt.number)

    def _deferred(self, deferral: QuotaDeferral, attempts: int) -> Outcome:
        return Outcome(status=CallStatus.deferred, attempts=attempts,
                       reason=f"daily quota: {deferral.remaining} requests left today for "
                       f"{self.subject}, {deferral.reserve} kept in reserve; not sent")

    def _throttled(self, retry_after: float | None) -> None:
        """A 429: count it and slow everyone sharing the budget."""
        self.throttled += 1
        self.pacer.on_throttled(retry_after)
        log.warning("%s 429 for %s; backing off", self.service, self.subject)

    def _problem(self, attempt: Attempt) -> str:
        """What went wrong with an attempt, in one line."""
        if isinstance(attempt.result, httpx.Response):
            return describe_status(attempt.result, self.service)
        return transport_problem(attempt.result)
