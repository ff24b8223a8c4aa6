"""PostalyticsClient over httpx.MockTransport: auth, shapes, paging, retries, pacing."""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from mailsync.clients.postalytics import (
    PostalyticsAuthError,
    PostalyticsClient,
    PostalyticsError,
    unwrap_list,
)
from mailsync.clients.ratelimit import FixedRateLimiter, postalytics_limiter
from mailsync.redact import Secret
from tests.clock import VirtualTime

BASE = "https://api.postalytics.com/api/v1"
KEY = "pk_live_postalytics_key_123"
EVENT = {"EventId": "e1", "Event": "Mailed", "EventDate": "2026-11-20T14:03:00Z"}


def make(
    handler: Callable[[httpx.Request], httpx.Response], ft: VirtualTime | None = None, **kw: Any
) -> tuple[PostalyticsClient, list[httpx.Request]]:
    ft = ft or VirtualTime()
    seen: list[httpx.Request] = []

    def recording(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    kw.setdefault("limiter", FixedRateLimiter(3, 1, clock=ft.clock, sleep=ft.sleep))
    client = PostalyticsClient(BASE, Secret(KEY), "acme", transport=httpx.MockTransport(recording),
                               sleep=ft.sleep, rng=random.Random(3), **kw)
    return client, seen


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_basic_auth_and_paths() -> None:
    client, seen = make(lambda r: httpx.Response(200, json=[{"drop_id": 7, "name": "Fall"}]))
    campaigns = run(client.list_campaigns())
    assert campaigns == [{"drop_id": 7, "name": "Fall"}]
    request = seen[0]
    assert request.url.path == "/api/v1/campaigns"
    expected = base64.b64encode(f"{KEY}:".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"


def test_events_page_sends_paging_params() -> None:
    client, seen = make(lambda r: httpx.Response(200, json=[EVENT]))
    events = run(client.events_page(42, 3, page_size=50))
    assert events == [EVENT]
    assert seen[0].url.path == "/api/v1/campaigns/42/events"
    assert dict(seen[0].url.params) == {"PageNumber": "3", "PageSize": "50"}


@pytest.mark.parametrize(
    "body",
    [
        [EVENT],
        {"events": [EVENT]},
        {"Events": [EVENT], "TotalCount": 1},
        {"data": [EVENT], "page": 1},
        {"Items": [EVENT]},
        {"results": [EVENT]},
        {"whatever": [EVENT], "count": 1},
    ],
)
def test_events_page_accepts_plausible_shapes(body: Any) -> None:
    client, _ = make(lambda r: httpx.Response(200, json=body))
    assert run(client.events_page(42, 1)) == [EVENT]


@pytest.mark.parametrize("body", [None, {}, [], {"events": None}])
def test_empty_shapes_are_an_empty_page(body: Any) -> None:
    assert unwrap_list(body) == []


def test_ambiguous_shape_is_an_error() -> None:
    with pytest.raises(PostalyticsError, match="unexpected shape"):
        unwrap_list({"a": [1], "b": [2]})
    with pytest.raises(PostalyticsError):
        unwrap_list("text")


def test_page_size_is_bounded() -> None:
    client, seen = make(lambda r: httpx.Response(200, json=[]))
    with pytest.raises(ValueError):
        run(client.events_page(1, 1, page_size=101))
    with pytest.raises(ValueError):
        run(client.events_page(1, 0))
    assert seen == []


def test_details_and_recipient_events() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/details"):
            return httpx.Response(200, json={"DirectMailDropId": 9, "Status": 1})
        return httpx.Response(200, json={"events": [EVENT]})

    client, seen = make(handler)
    assert run(client.campaign_details(9)) == {"DirectMailDropId": 9, "Status": 1}
    assert run(client.recipient_events(9, "c 1")) == [EVENT]
    assert seen[1].url.raw_path == b"/api/v1/campaigns/9/events/c%201"


def test_401_is_fatal_names_account_not_key() -> None:
    body = {"error": {"message": "Invalid API key. User authentication failed",
                      "status_code": 401}}
    client, seen = make(lambda r: httpx.Response(401, json=body))
    with pytest.raises(PostalyticsAuthError) as info:
        run(client.list_campaigns())
    text = str(info.value)
    assert "'acme'" in text and "Invalid API key" in text and KEY not in text
    assert len(seen) == 1


def test_429_honours_retry_after_and_slows_the_limiter() -> None:
    ft = VirtualTime()
    answers = iter([httpx.Response(429, headers={"Retry-After": "2"}),
                    httpx.Response(200, json=[])])
    client, seen = make(lambda r: next(answers), ft)
    assert run(client.events_page(1, 1)) == []
    assert 2 in ft.sleeps and client.throttled == 1 and len(seen) == 2


def test_429_without_retry_after_backs_off() -> None:
    ft = VirtualTime()
    answers = iter([httpx.Response(429), httpx.Response(200, json=[])])
    client, _ = make(lambda r: next(answers), ft)
    run(client.list_campaigns())
    assert ft.sleeps and 0.25 <= ft.sleeps[0] <= 0.5


@pytest.mark.parametrize("fault", [httpx.ConnectError, httpx.ReadTimeout,
                                   httpx.RemoteProtocolError])
def test_gets_are_retried_after_network_errors(fault: type[Exception]) -> None:
    calls = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        calls[0] += 1
        if calls[0] == 1:
            raise fault("simulated", request=request)
        return httpx.Response(200, json=[EVENT])

    client, _ = make(handler)
    assert run(client.events_page(1, 1)) == [EVENT]
    assert calls[0] == 2


def test_retries_spent_raise_with_outcome() -> None:
    client, seen = make(lambda r: httpx.Response(500, text="oops"), max_attempts=3)
    with pytest.raises(PostalyticsError) as info:
        run(client.list_campaigns())
    assert info.value.outcome is not None and info.value.outcome.status == "failed"
    assert len(seen) == 3 and "500" in str(info.value)


def test_404_is_an_error_with_rejected_outcome() -> None:
    client, seen = make(lambda r: httpx.Response(404, json={"message": "not found"}))
    with pytest.raises(PostalyticsError) as info:
        run(client.campaign_details(1))
    assert info.value.outcome is not None and info.value.outcome.status == "rejected"
    assert len(seen) == 1


def test_requests_are_paced_at_three_per_second() -> None:
    ft = VirtualTime()
    stamps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        stamps.append(ft.now)
        return httpx.Response(200, json=[])

    client, _ = make(handler, ft)

    async def many() -> None:
        await asyncio.gather(*(client.events_page(1, p) for p in range(1, 13)))

    run(many())
    assert len(stamps) == 12
    ordered = sorted(stamps)
    for i in range(len(ordered) - 3):
        assert ordered[i + 3] - ordered[i] > 1.0  # never 4 in one second


def test_limiter_is_shared_per_key() -> None:
    a = PostalyticsClient(BASE, "shared-key-abcdef", "a")
    b = PostalyticsClient(BASE, Secret("shared-key-abcdef"), "b")
    c = PostalyticsClient(BASE, "other-key-abcdef", "c")
    assert a.limiter is b.limiter is postalytics_limiter("shared-key-abcdef")
    assert c.limiter is not a.limiter


def test_plain_http_is_refused_except_loopback() -> None:
    with pytest.raises(ValueError, match="https"):
        PostalyticsClient("http://api.postalytics.com/api/v1", KEY)
    PostalyticsClient("http://127.0.0.1:8000/api/v1", KEY)
    PostalyticsClient("http://localhost:8000/api/v1", KEY)
    PostalyticsClient("http://[::1]:8000/api/v1", KEY)


def test_repr_hides_key() -> None:
    client, _ = make(lambda r: httpx.Response(200, json=[]))
    assert KEY not in repr(client) and "acme" in repr(client)


def test_events_that_are_not_objects_are_passed_on_for_quarantine() -> None:
    client, _ = make(lambda r: httpx.Response(200, json=[EVENT, "junk", 7, None]))
    assert run(client.events_page(42, 1)) == [EVENT, "junk", 7, None]
