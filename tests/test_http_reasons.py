"""Reasons people read: an error page summarised, text cut, control characters gone, markup
kept as plain text, secrets masked; an unreachable API named by host and port, typed."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx
import pytest

from mailsync.clients.highlevel import HighLevelClient
from mailsync.clients.http import CallStatus, Outcome
from mailsync.clients.messages import BODY_CAP, ELLIPSIS, REASON_CAP, describe_status, one_line
from mailsync.clients.postalytics import (
    PostalyticsAuthError,
    PostalyticsClient,
    PostalyticsError,
    PostalyticsFailure,
)
from mailsync.clients.ratelimit import FixedRateLimiter, WindowPacer
from mailsync.redact import Secret
from tests.hl_mock import make, note_ok, sequence, tags_ok

NGINX_502 = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center>"
             "<h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.25.3</center>\r\n"
             "</body>\r\n</html>\r\n")
NGINX_503 = NGINX_502.replace("502 Bad Gateway", "503 Service Temporarily Unavailable")
HOSTILE = ("[red]x[/red] <script>alert(1)</script> \x1b[31mred\x1b[0m\x00\x07 tab\there\r\n"
           "next line \u202eevil\u200b end ")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def nosleep(_: float) -> None:
    await asyncio.sleep(0)


def clean(text: str) -> bool:
    """No control or invisible formatting character anywhere."""
    return not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in "\u202e\u200b" for c in text)


# -- error bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "page"), [(502, NGINX_502), (503, NGINX_503)])
def test_a_gateway_html_page_becomes_a_short_summary_naming_the_api(status: int,
                                                                    page: str) -> None:
    client, rec = make(lambda r: httpx.Response(status, text=page,
                                                headers={"Content-Type": "text/html"}),
                       max_attempts=2)
    out = run(client.add_tags("c1", ["t"]))
    assert out.status == "failed" and out.http_status == status and len(rec.requests) == 2
    assert f"HTTP {status}" in out.reason and "from HighLevel: gateway error page" in out.reason
    assert "<" not in out.reason and "nginx" not in out.reason and "title" not in out.reason


def test_an_html_page_sent_as_plain_text_is_still_not_pasted() -> None:
    response = httpx.Response(503, text="<!DOCTYPE html><html><body>Maintenance</body></html>")
    assert describe_status(response, "Postalytics") == (
        "HTTP 503 Service Unavailable from Postalytics: gateway error page (52 bytes)")


def test_a_postalytics_error_page_is_summarised_in_its_exception() -> None:
    client = PostalyticsClient(
        "https://api.postalytics.com/api/v1", "pk-reasons-0001", "acme",
        transport=httpx.MockTransport(lambda r: httpx.Response(
            502, text=NGINX_502, headers={"Content-Type": "text/html"})),
        limiter=FixedRateLimiter(1000, 1), max_attempts=2, sleep=nosleep)
    with pytest.raises(PostalyticsError) as info:
        run(client.events_page(7, 1))
    text = str(info.value)
    assert "from Postalytics: gateway error page" in text and "<" not in text
    assert info.value.kind is PostalyticsFailure.other and info.value.http_status == 502


def test_a_5kb_text_body_is_cut_with_an_ellipsis() -> None:
    body = "Upstream failure: " + "lorem ipsum dolor sit amet " * 200  # ~5.4 KB
    client, _ = make(lambda r: httpx.Response(500, text=body), max_attempts=2)
    out = run(client.add_tags("c1", ["t"]))
    head = "gave up after 2 attempts: HTTP 500 Internal Server Error from HighLevel: "
    assert out.reason.startswith(head + "Upstream failure: lorem ipsum")
    words = out.reason.removeprefix(head)
    assert words.endswith(ELLIPSIS) and len(words) <= BODY_CAP
    assert len(out.reason) <= REASON_CAP


def test_control_characters_go_and_markup_stays_plain_text() -> None:
    client, _ = make(lambda r: httpx.Response(400, text=HOSTILE + "y" * 400))
    out = run(client.create_note("c1", "hello"))
    assert out.status == "rejected" and out.http_status == 400
    # Markup is data: kept literally (never interpreted, never escaped into something else).
    assert "[red]x[/red] <script>alert(1)</script> red tab here next line evil end" in out.reason
    assert clean(out.reason) and "[31m" not in out.reason
    assert out.reason.endswith(ELLIPSIS) and len(out.reason) <= REASON_CAP


def test_json_messages_keep_highlevels_words_cleaned() -> None:
    body = {"statusCode": 400, "message": "Contact\x00 not\tfound \x1b[1m[bold]x[/bold]"}
    client, _ = make(lambda r: httpx.Response(400, json=body))
    out = run(client.get_contact("c1"))
    assert out.reason == "HTTP 400 Bad Request: Contact not found [bold]x[/bold]"
    many = {"statusCode": 422, "message": [f"field {i} is wrong" for i in range(60)],
            "error": "Unprocessable Entity"}
    client, _ = make(lambda r: httpx.Response(422, json=many))
    out = run(client.add_tags("c1", ["t"]))
    assert out.reason.startswith("HTTP 422 Unprocessable Entity: field 0 is wrong; field 1")
    assert out.reason.endswith(ELLIPSIS) and len(out.reason) <= REASON_CAP


def test_a_secret_split_by_control_characters_is_still_masked() -> None:
    key = "pk-split-secret-123456"
    Secret(key)  # registered, as every credential the process holds is
    text = f"echo {key[:6]}\x00{key[6:12]}\x1b[0m{key[12:]} done"
    assert key not in one_line(text) and "***" in one_line(text)


def test_every_outcome_reason_is_capped_and_one_line() -> None:
    out = Outcome(status="failed", reason="line one\nline two " + "z" * 5000)
    assert len(out.reason) == REASON_CAP and out.reason.endswith(ELLIPSIS)
    assert out.reason.startswith("line one line two") and "\n" not in out.reason


def test_the_status_is_an_enum_equal_to_its_old_string() -> None:
    out = Outcome(status="deferred")
    assert out.status is CallStatus.deferred and out.status == "deferred"
    assert {"deferred": 1}[out.status] == 1  # callers key dicts by the plain strings


# -- unreachable APIs -----------------------------------------------------------------------


def refused(request: httpx.Request) -> httpx.Response:
    # How httpx reports it for real: ConnectError caused by the socket's ConnectionRefusedError.
    raise httpx.ConnectError("All connection attempts failed", request=request) from (
        ConnectionRefusedError(111, "Connect call failed"))


def no_such_host(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno -2] Name or service not known", request=request) from (
        socket.gaierror(-2, "Name or service not known"))


def connect_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectTimeout("timed out", request=request)


@pytest.mark.parametrize(("handler", "why", "kind"), [
    (refused, "connection refused", "ConnectError"),
    (no_such_host, "host name not found (DNS)", "ConnectError"),
    (connect_timeout, "connection timed out", "ConnectTimeout"),
])
def test_an_unreachable_highlevel_is_named_by_host_and_flagged(handler: Any, why: str,
                                                               kind: str) -> None:
    client, rec = make(handler, max_attempts=3)
    out = run(client.find_contact(email="ada@example.com"))
    assert out.status == "failed" and out.unreachable and out.http_status is None
    assert out.reason == (f"cannot reach HighLevel at services.leadconnectorhq.com:443: {why} "
                          f"({kind}, 3 attempts)")
    assert len(rec.requests) == 3


def test_a_note_that_never_left_is_failed_not_unknown() -> None:
    client, rec = make(sequence(refused, refused), max_attempts=2)
    out = run(client.create_note("c1", "hello"))
    assert (out.status, out.unreachable, len(rec.requests)) == ("failed", True, 2)


def test_an_api_that_answered_or_was_reached_is_not_unreachable() -> None:
    client, _ = make(sequence(httpx.ReadTimeout, httpx.ReadTimeout), max_attempts=2)
    out = run(client.list_notes("c1"))
    assert out.status == "failed" and not out.unreachable
    assert out.reason.startswith("gave up after 2 attempts: network error ReadTimeout")
    client, _ = make(sequence(refused, httpx.Response(503)), max_attempts=2)
    out = run(client.get_contact("c1"))
    assert not out.unreachable and out.http_status == 503
    client, _ = make(sequence(refused, tags_ok))
    assert run(client.add_tags("c1", ["t"])).ok
    client, _ = make(sequence(refused, note_ok))
    assert run(client.create_note("c1", "x")).ok


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_real_refused_connection_names_host_and_port_only() -> None:
    port = closed_port()
    client = HighLevelClient(f"http://127.0.0.1:{port}", "loc-real-1", "pit-real-000001",
                             pacer=WindowPacer(), max_attempts=2, sleep=nosleep)
    out = run(client.find_contact(email="ada@example.com"))
    assert out.unreachable and out.reason == (
        f"cannot reach HighLevel at 127.0.0.1:{port}: connection refused (ConnectError, "
        "2 attempts)")
    for never in ("http://", "/contacts", "ada@example.com", "loc-real-1", "pit-real"):
        assert never not in out.reason


def test_postalytics_unreachable_is_a_typed_one_line_error() -> None:
    port = closed_port()
    client = PostalyticsClient(f"http://127.0.0.1:{port}/api/v1", "pk-real-000001", "acme",
                               limiter=FixedRateLimiter(1000, 1), max_attempts=2,
                               sleep=nosleep)
    with pytest.raises(PostalyticsError) as info:
        run(client.events_page(42, 3))
    exc = info.value
    assert exc.kind is PostalyticsFailure.unreachable and exc.host == f"127.0.0.1:{port}"
    assert exc.http_status is None and exc.outcome is not None and exc.outcome.unreachable
    text = str(exc)
    assert f"cannot reach Postalytics at 127.0.0.1:{port}: connection refused" in text
    assert "\n" not in text and "PageNumber" not in text and "pk-real" not in text


def test_postalytics_refused_key_and_other_failures_are_typed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/campaigns"):
            return httpx.Response(401, json={"error": {"message": "Invalid API key"}})
        return httpx.Response(404, content=json.dumps({"message": "no such campaign"}))

    client = PostalyticsClient("https://api.postalytics.com/api/v1", "pk-typed-000001", "acme",
                               transport=httpx.MockTransport(handler),
                               limiter=FixedRateLimiter(1000, 1), sleep=nosleep)
    with pytest.raises(PostalyticsAuthError) as auth:
        run(client.list_campaigns())
    assert auth.value.kind is PostalyticsFailure.refused_credentials
    assert auth.value.http_status == 401 and auth.value.host == "api.postalytics.com:443"
    with pytest.raises(PostalyticsError) as other:
        run(client.campaign_details(9))
    assert other.value.kind is PostalyticsFailure.other and other.value.http_status == 404
    assert other.value.host == "api.postalytics.com:443"
