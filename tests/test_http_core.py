"""The shared HTTP base: classification, https check, Retry-After, error text, backoff."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from mailsync.clients.highlevel import HighLevelClient
from mailsync.clients.http import (
    ApiClient,
    Outcome,
    check_base_url,
    judge_attempt,
    retry_after_seconds,
)
from mailsync.clients.messages import describe_status, error_message

REQ = httpx.Request("POST", "https://example.com/x")


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, "ok"), (201, "ok"), (204, "ok"), (400, "rejected"), (401, "unauthorized"),
     (403, "rejected"), (404, "rejected"), (409, "rejected"), (422, "rejected"),
     (429, "retry"), (500, "retry"), (502, "retry"), (503, "retry"), (301, "rejected")],
)
def test_judge_responses(status: int, verdict: str) -> None:
    for idempotent in (True, False):
        assert judge_attempt(httpx.Response(status), idempotent=idempotent) == verdict


def test_a_gateway_timeout_on_a_note_is_unknown_not_retried() -> None:
    # A 504 is the gateway's answer, not HighLevel's: the note may still have been created.
    assert judge_attempt(httpx.Response(504), idempotent=True) == "retry"
    assert judge_attempt(httpx.Response(504), idempotent=False) == "unknown"


@pytest.mark.parametrize(
    ("exc", "idempotent_verdict", "write_verdict"),
    [
        (httpx.ConnectError, "retry", "retry"),
        (httpx.ConnectTimeout, "retry", "retry"),
        (httpx.PoolTimeout, "retry", "retry"),
        (httpx.ReadTimeout, "retry", "unknown"),
        (httpx.WriteTimeout, "retry", "unknown"),
        (httpx.ReadError, "retry", "unknown"),
        (httpx.WriteError, "retry", "unknown"),
        (httpx.RemoteProtocolError, "retry", "unknown"),
    ],
)
def test_judge_transport_errors(
    exc: type[Exception], idempotent_verdict: str, write_verdict: str
) -> None:
    error = exc("x", request=REQ)
    assert judge_attempt(error, idempotent=True) == idempotent_verdict
    assert judge_attempt(error, idempotent=False) == write_verdict


def test_judge_refuses_foreign_exceptions() -> None:
    with pytest.raises(TypeError):
        judge_attempt(ValueError("x"), idempotent=True)


@pytest.mark.parametrize(
    "url",
    ["https://services.leadconnectorhq.com", "http://127.0.0.1:8080", "http://127.3.4.5",
     "http://localhost:9000/api/v1", "http://[::1]:8000"],
)
def test_base_url_accepted(url: str) -> None:
    assert check_base_url(url) == url


@pytest.mark.parametrize(
    "url",
    ["http://services.leadconnectorhq.com", "http://10.0.0.1", "http://localhost.evil.com",
     "ftp://example.com", "https://user:pass@example.com", "example.com"],
)
def test_base_url_refused(url: str) -> None:
    with pytest.raises(ValueError):
        check_base_url(url)


def test_clients_refuse_plain_http() -> None:
    with pytest.raises(ValueError, match="https"):
        HighLevelClient("http://services.leadconnectorhq.com", "loc", "pit-token-xyz")


def test_retry_after_forms() -> None:
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"Retry-After": "12"}) == 12.0
    assert retry_after_seconds({"Retry-After": "-3"}) == 0.0
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    when = datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC)
    now = datetime(2030, 1, 1, 0, 0, 0, tzinfo=UTC).timestamp()
    header = {"Retry-After": format_datetime(when, usegmt=True)}
    assert retry_after_seconds(header, now=now) == pytest.approx(30.0)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (422, {"statusCode": 422, "message": ["a is bad", "b is bad"], "error": "x"},
         "a is bad; b is bad"),
        (400, {"statusCode": 400, "message": "Bad things"}, "Bad things"),
        (401, {"error": {"message": "Invalid API key", "status_code": 401}}, "Invalid API key"),
        (400, {"error": "invalid_grant"}, "invalid_grant"),
    ],
)
def test_error_message_in_plain_words(status: int, body: object, expected: str) -> None:
    assert error_message(httpx.Response(status, json=body)) == expected


def test_error_message_falls_back_to_text() -> None:
    # A page is summarised, never pasted (tests/test_http_reasons.py); plain text is kept.
    response = httpx.Response(502, text="upstream\n  went   away\n")
    assert error_message(response) == "upstream went away"
    assert describe_status(response) == "HTTP 502 Bad Gateway: upstream went away"


def test_backoff_is_exponential_capped_and_jittered() -> None:
    client = ApiClient("https://example.com", rng=random.Random(7), backoff_base=1.0,
                       backoff_cap=10.0)
    for retry, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)]:
        delays = [client.backoff(retry) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
    asyncio.run(client.aclose())


def test_outcome_model() -> None:
    out = Outcome(status="ok", http_status=201, remote_id="n1", data={"id": "n1"}, attempts=1)
    assert out.ok and not Outcome(status="unknown").ok
    with pytest.raises(ValueError):
        Outcome(status="maybe")  # type: ignore[arg-type]


def test_timeouts_are_set_by_default_and_configurable() -> None:
    client = HighLevelClient("https://services.leadconnectorhq.com", "loc", "pit-token-xyz")
    assert client.http.timeout.connect == 5.0 and client.http.timeout.read == 15.0
    other = HighLevelClient("https://services.leadconnectorhq.com", "loc", "pit-token-xyz",
                            timeout=httpx.Timeout(2.0, connect=1.0))
    assert other.http.timeout.read == 2.0 and other.http.timeout.connect == 1.0


def test_async_context_manager_closes() -> None:
    async def go() -> bool:
        async with HighLevelClient("https://services.leadconnectorhq.com", "loc",
                                   "pit-token-xyz") as client:
            pass
        return client.http.is_closed

    assert asyncio.run(go())
