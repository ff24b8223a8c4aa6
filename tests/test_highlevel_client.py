"""HighLevelClient over httpx.MockTransport: every fault kind ends in the right outcome."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from mailsync.clients.auth import InMemoryTokenStore, OAuthTokenAuth, TokenRefreshError
from mailsync.clients.highlevel import API_VERSION, HighLevelAuthError, HighLevelClient
from mailsync.store.tokens import StoredToken
from tests.clock import VirtualTime
from tests.hl_mock import LOC, PIT, Recorder, make, note_ok, sequence, tags_ok


def run(coro: Any) -> Any:
    return asyncio.run(coro)






# -- happy paths ----------------------------------------------------------------------------


def test_add_tags_sends_headers_and_returns_tags() -> None:
    client, rec = make(tags_ok)
    out = run(client.add_tags("c1", ["Postalytics Event: Mailed"]))
    assert out.status == "ok" and out.http_status == 201 and out.attempts == 1
    assert out.data == ["postalytics event: mailed", "vip"]
    req = rec.requests[0]
    assert req.method == "POST" and req.url.path == "/contacts/c1/tags"
    assert req.headers["Authorization"] == f"Bearer {PIT}"
    assert req.headers["Version"] == API_VERSION


def test_remove_tags_is_a_delete_with_json_body() -> None:
    client, rec = make(lambda r: httpx.Response(200, json={"tags": []}))
    out = run(client.remove_tags("c1", ["x-tag"]))
    assert out.ok and out.data == []
    assert rec.requests[0].method == "DELETE"
    assert json.loads(rec.requests[0].content) == {"tags": ["x-tag"]}


def test_create_note_returns_note_id() -> None:
    client, rec = make(note_ok)
    out = run(client.create_note("c1", "Mailed on 2026-11-20", title="Postalytics"))
    assert out.ok and out.remote_id == "note-1" and out.data["body"] == "Mailed on 2026-11-20"
    assert json.loads(rec.requests[0].content) == {
        "body": "Mailed on 2026-11-20", "title": "Postalytics"
    }


def test_list_notes_and_get_contact() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/notes"):
            return httpx.Response(200, json={"notes": [{"id": "n1", "body": "x"}]})
        return httpx.Response(200, json={"contact": {"id": "c1", "tags": []}})

    client, _ = make(handler)
    notes = run(client.list_notes("c1"))
    contact = run(client.get_contact("c1"))
    assert notes.data == [{"id": "n1", "body": "x"}]
    assert contact.remote_id == "c1" and contact.data == {"id": "c1", "tags": []}


def test_contact_id_is_quoted_into_one_path_segment() -> None:
    client, rec = make(tags_ok)
    run(client.add_tags("a/../b", ["t1"]))
    assert rec.requests[0].url.raw_path == b"/contacts/a%2F..%2Fb/tags"


def test_find_contact_tries_email_then_phone_and_encodes_plus() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        q = parse_qs(request.url.query.decode())
        if "email" in q:
            return httpx.Response(200, json={"contact": None})
        return httpx.Response(200, json={"contact": {"id": "c9", "phone": q["number"][0]}})

    client, rec = make(handler)
    out = run(client.find_contact(email="a+b@example.com", phone="+15555550123"))
    assert out.ok and out.remote_id == "c9" and out.attempts == 2
    raw = [r.url.query.decode() for r in rec.requests]
    assert raw[0] == f"locationId={LOC}&email=a%2Bb%40example.com"
    assert raw[1] == f"locationId={LOC}&number=%2B15555550123"


def test_find_contact_accepts_missing_contact_key() -> None:
    client, rec = make(lambda r: httpx.Response(200, json={}))
    out = run(client.find_contact(email="nobody@example.com"))
    assert out.ok and out.data is None and out.remote_id is None
    assert len(rec.requests) == 1


def test_find_contact_stops_on_error() -> None:
    client, rec = make(lambda r: httpx.Response(400, json={"statusCode": 400, "message": "bad"}))
    out = run(client.find_contact(email="x@example.com", phone="+1555"))
    assert out.status == "rejected" and len(rec.requests) == 1


def test_upsert_refuses_tags_and_sets_location() -> None:
    client, rec = make(
        lambda r: httpx.Response(200, json={"new": True, "contact": {"id": "c5"}, "traceId": "t"})
    )
    with pytest.raises(ValueError, match="tags"):
        run(client.upsert_contact({"email": "a@example.com", "Tags": ["x"]}))
    with pytest.raises(ValueError, match="location"):
        run(client.upsert_contact({"email": "a@example.com", "locationId": "other"}))
    out = run(client.upsert_contact({"email": "a@example.com"}))
    assert out.ok and out.remote_id == "c5" and out.data["new"] is True
    assert json.loads(rec.requests[0].content) == {"email": "a@example.com", "locationId": LOC}


# -- faults ---------------------------------------------------------------------------------




def test_500_then_ok_is_retried() -> None:
    ft = VirtualTime()
    client, rec = make(sequence(httpx.Response(500), tags_ok), ft)
    out = run(client.add_tags("c1", ["t"]))
    assert out.ok and out.attempts == 2 and len(rec.requests) == 2
    assert len(ft.sleeps) == 1 and 0.25 <= ft.sleeps[0] <= 0.5


def test_500_until_spent_is_failed() -> None:
    client, rec = make(lambda r: httpx.Response(503, json={"message": "down"}), max_attempts=4)
    out = run(client.add_tags("c1", ["t"]))
    assert out.status == "failed" and out.attempts == 4 and len(rec.requests) == 4
    assert out.http_status == 503 and "down" in out.reason


def test_429_without_retry_after_backs_off_and_pacer_learns() -> None:
    ft = VirtualTime()
    client, _rec = make(sequence(httpx.Response(429), tags_ok), ft)
    out = run(client.add_tags("c1", ["t"]))
    assert out.ok and client.throttled == 1 and client.pacer.throttled == 1
    # Backoff (jittered) plus waiting out the window the 429 declared spent.
    assert 0.25 <= ft.sleeps[0] <= 0.5
    assert sum(ft.sleeps) >= client.pacer.interval


def test_429_with_retry_after_is_honoured() -> None:
    ft = VirtualTime()
    client, _ = make(sequence(httpx.Response(429, headers={"Retry-After": "7"}), tags_ok), ft)
    out = run(client.add_tags("c1", ["t"]))
    assert out.ok and 7 in ft.sleeps


def test_retry_after_beyond_limit_fails_fast() -> None:
    ft = VirtualTime()
    client, rec = make(lambda r: httpx.Response(429, headers={"Retry-After": "3600"}), ft)
    out = run(client.add_tags("c1", ["t"]))
    assert out.status == "failed" and len(rec.requests) == 1 and "3600" in out.reason


@pytest.mark.parametrize(
    "exc", [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError]
)
def test_note_without_answer_is_unknown_and_not_retried(exc: type[Exception]) -> None:
    client, rec = make(sequence(exc, note_ok))
    out = run(client.create_note("c1", "hello"))
    assert out.status == "unknown" and out.attempts == 1
    assert len(rec.requests) == 1
    assert exc.__name__ in out.reason


def test_note_met_by_a_gateway_timeout_is_unknown_and_not_retried() -> None:
    client, rec = make(sequence(httpx.Response(504), note_ok))
    out = run(client.create_note("c1", "hello"))
    assert (out.status, out.http_status, len(rec.requests)) == ("unknown", 504, 1)


def test_upsert_without_answer_is_unknown() -> None:
    client, rec = make(sequence(httpx.ReadTimeout))
    out = run(client.upsert_contact({"email": "a@example.com"}))
    assert out.status == "unknown" and len(rec.requests) == 1


@pytest.mark.parametrize("exc", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout])
def test_note_not_sent_is_retried(exc: type[Exception]) -> None:
    client, rec = make(sequence(exc, note_ok))
    out = run(client.create_note("c1", "hello"))
    assert out.ok and out.remote_id == "note-1" and len(rec.requests) == 2


def test_note_5xx_answer_is_retried() -> None:
    client, rec = make(sequence(httpx.Response(502), note_ok))
    out = run(client.create_note("c1", "hello"))
    assert out.ok and len(rec.requests) == 2


@pytest.mark.parametrize("exc", [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError])
def test_tags_are_idempotent_and_retried(exc: type[Exception]) -> None:
    client, _rec = make(sequence(exc, tags_ok))
    out = run(client.add_tags("c1", ["t"]))
    assert out.ok and out.attempts == 2


def test_network_errors_until_spent_are_failed() -> None:
    client, _rec = make(sequence(*[httpx.ConnectError] * 3), max_attempts=3)
    out = run(client.create_note("c1", "hello"))
    assert out.status == "failed" and out.http_status is None and "ConnectError" in out.reason


def test_422_message_list_is_joined() -> None:
    body = {"statusCode": 422, "message": ["tags must be an array", "tags should not be empty"],
            "error": "Unprocessable Entity"}
    client, rec = make(lambda r: httpx.Response(422, json=body))
    out = run(client.add_tags("c1", ["t"]))
    assert out.status == "rejected" and out.http_status == 422 and len(rec.requests) == 1
    assert "tags must be an array; tags should not be empty" in out.reason


def test_404_contact_not_found_is_rejected() -> None:
    client, _ = make(lambda r: httpx.Response(404, json={"statusCode": 404,
                                                         "message": "Contact not found"}))
    out = run(client.create_note("missing", "hello"))
    assert out.status == "rejected" and out.http_status == 404
    assert out.reason == "HTTP 404 Not Found: Contact not found"


def test_403_other_location_is_rejected() -> None:
    msg = "The token does not have access to this location."
    client, _ = make(lambda r: httpx.Response(403, json={"statusCode": 403, "message": msg}))
    out = run(client.get_contact("c1"))
    assert out.status == "rejected" and msg in out.reason


def test_static_token_401_is_fatal_and_names_location_not_token() -> None:
    client, rec = make(lambda r: httpx.Response(401, json={"statusCode": 401,
                                                           "message": "Invalid JWT"}))
    with pytest.raises(HighLevelAuthError) as info:
        run(client.add_tags("c1", ["t"]))
    assert LOC in str(info.value) and PIT not in str(info.value)
    assert len(rec.requests) == 1


# -- daily quota ----------------------------------------------------------------------------


def test_daily_quota_near_zero_defers_writes_without_sending() -> None:
    left = [13]

    def handler(request: httpx.Request) -> httpx.Response:
        left[0] -= 1
        headers = {"X-RateLimit-Daily-Remaining": str(left[0]),
                   "X-RateLimit-Limit-Daily": "200000"}
        return httpx.Response(201, json={"tags": []}, headers=headers)

    client, rec = make(handler, daily_reserve=10)
    assert run(client.add_tags("c1", ["t"])).ok
    assert client.rate_limit.daily_remaining == 12
    assert run(client.add_tags("c1", ["t"])).ok
    assert run(client.add_tags("c1", ["t"])).ok  # 10 left now: the reserve
    out = run(client.add_tags("c1", ["t"]))
    assert out.status == "deferred" and "daily quota" in out.reason and out.attempts == 0
    note = run(client.create_note("c1", "x"))
    assert note.status == "deferred"
    assert len(rec.requests) == 3
    # Reads still go (they are what settles unknown notes).
    run(client.list_notes("c1"))
    assert len(rec.requests) == 4


# -- OAuth ----------------------------------------------------------------------------------


class OAuthServer:
    """A token endpoint that rotates refresh tokens, and contacts that accept only the
    current access token."""

    def __init__(self) -> None:
        self.generation = 0
        self.refresh_calls: list[dict[str, list[str]]] = []
        self.valid_refresh = "refresh-gen-0"
        self.events: list[str] = []

    @property
    def access(self) -> str:
        return f"access-gen-{self.generation}"

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            form = parse_qs(request.content.decode())
            self.refresh_calls.append(form)
            if form["refresh_token"] != [self.valid_refresh]:
                return httpx.Response(401, json={"error": "invalid_grant",
                                                 "error_description": "bad refresh token"})
            self.generation += 1
            self.valid_refresh = f"refresh-gen-{self.generation}"
            self.events.append("refreshed")
            return httpx.Response(200, json={
                "access_token": self.access, "refresh_token": self.valid_refresh,
                "expires_in": 86399, "token_type": "Bearer", "userType": "Location",
            })
        self.events.append("api")
        if request.headers.get("Authorization") != f"Bearer {self.access}":
            return httpx.Response(401, json={"statusCode": 401, "message": "Invalid JWT",
                                             "error": "Unauthorized"})
        return tags_ok(request)


def oauth_client(
    server: OAuthServer, store: InMemoryTokenStore
) -> tuple[HighLevelClient, Recorder]:
    auth = OAuthTokenAuth(LOC, "client-id-123", "client-secret-456", store,
                          refresh_token="refresh-gen-0")
    return make(server, auth=auth)


def test_oauth_401_refreshes_once_then_retries() -> None:
    server = OAuthServer()
    store = InMemoryTokenStore({LOC: StoredToken(refresh_token="refresh-gen-0",
                                                 access_token="access-old")})
    client, rec = oauth_client(server, store)
    out = run(client.add_tags("c1", ["t"]))
    assert out.ok and out.attempts == 2
    assert len(server.refresh_calls) == 1
    form = server.refresh_calls[0]
    assert form == {"client_id": ["client-id-123"], "client_secret": ["client-secret-456"],
                    "grant_type": ["refresh_token"], "refresh_token": ["refresh-gen-0"],
                    "user_type": ["Location"]}
    token_req = next(r for r in rec.requests if r.url.path == "/oauth/token")
    assert token_req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    saved = store.load(LOC)
    assert saved is not None and saved.refresh_token.get() == "refresh-gen-1"
    assert saved.access_token is not None and saved.access_token.get() == "access-gen-1"


def test_oauth_saves_rotated_token_before_using_it() -> None:
    server = OAuthServer()
    order: list[str] = []

    class Spy(InMemoryTokenStore):
        def save(self, location_id: str, token: StoredToken) -> None:
            order.append(f"save:{token.access_token.get() if token.access_token else None}")
            super().save(location_id, token)

    store = Spy({LOC: StoredToken(refresh_token="refresh-gen-0", access_token="stale")})
    client, rec = oauth_client(server, store)

    def watch(request: httpx.Request) -> httpx.Response:
        order.append(f"send:{request.headers.get('Authorization', '')}")
        return server(request)

    rec.handler = watch
    run(client.add_tags("c1", ["t"]))
    assert order.index("save:access-gen-1") < order.index("send:Bearer access-gen-1")


def test_concurrent_401s_share_one_refresh() -> None:
    server = OAuthServer()
    store = InMemoryTokenStore({LOC: StoredToken(refresh_token="refresh-gen-0",
                                                 access_token="access-old")})
    client, _ = oauth_client(server, store)

    async def burst() -> list[Any]:
        return await asyncio.gather(*(client.add_tags(f"c{i}", ["t"]) for i in range(20)))

    outs = run(burst())
    assert all(o.ok for o in outs)
    assert len(server.refresh_calls) == 1 and server.generation == 1


def test_oauth_second_401_after_refresh_is_fatal() -> None:
    server = OAuthServer()

    def always_401(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return server(request)
        return httpx.Response(401, json={"statusCode": 401, "message": "Invalid JWT"})

    store = InMemoryTokenStore({LOC: StoredToken(refresh_token="refresh-gen-0",
                                                 access_token="access-old")})
    client, rec = oauth_client(server, store)
    rec.handler = always_401
    with pytest.raises(HighLevelAuthError, match=LOC):
        run(client.add_tags("c1", ["t"]))
    assert len(server.refresh_calls) == 1


def test_oauth_refresh_rejected_is_an_auth_error_without_secrets() -> None:
    server = OAuthServer()
    server.valid_refresh = "something-else"
    client, _ = oauth_client(server, InMemoryTokenStore())
    with pytest.raises(HighLevelAuthError) as info:
        run(client.add_tags("c1", ["t"]))
    assert isinstance(info.value.__cause__, TokenRefreshError)
    text = str(info.value)
    assert "invalid_grant" in text and LOC in text
    for secret in ("client-secret-456", "refresh-gen-0", "client-id-123"):
        assert secret not in text


# -- pacing against a strict server ---------------------------------------------------------


class StrictWindowServer:
    """100 requests per 10 s per sliding window, with HighLevel's headers; 429 beyond."""

    def __init__(self, ft: VirtualTime, limit: int = 100, interval: float = 10.0) -> None:
        self.ft, self.limit, self.interval = ft, limit, interval
        self.hits: list[float] = []
        self.throttled = 0
        self.daily = 200_000

    def __call__(self, request: httpx.Request) -> httpx.Response:
        now = self.ft.now
        self.hits = [t for t in self.hits if t > now - self.interval]
        headers = {
            "X-RateLimit-Max": str(self.limit),
            "X-RateLimit-Interval-Milliseconds": str(int(self.interval * 1000)),
            "X-RateLimit-Limit-Daily": "200000",
        }
        if len(self.hits) >= self.limit:
            self.throttled += 1
            return httpx.Response(429, headers={**headers, "X-RateLimit-Remaining": "0"})
        self.hits.append(now)
        self.daily -= 1
        headers["X-RateLimit-Remaining"] = str(self.limit - len(self.hits))
        headers["X-RateLimit-Daily-Remaining"] = str(self.daily)
        return httpx.Response(201, json={"tags": ["t"]}, headers=headers)


def test_steady_stream_of_writes_draws_no_429() -> None:
    ft = VirtualTime()
    server = StrictWindowServer(ft)
    client, _ = make(server, ft)

    async def stream() -> list[Any]:
        return await asyncio.gather(*(client.add_tags(f"c{i}", ["t"]) for i in range(1000)))

    outs = run(stream())
    assert all(o.ok for o in outs)
    assert server.throttled == 0 and client.throttled == 0
    assert client.rate_limit.max == 100 and client.rate_limit.interval_ms == 10_000
    # Not needlessly slow either: 1,000 requests at ~95 per 10.5 s.
    assert ft.now - 1_000.0 < 120


def test_pacer_yields_to_another_spender_reported_by_headers() -> None:
    ft = VirtualTime()
    server = StrictWindowServer(ft)
    # Someone else (another app instance) already spent 60 of this window.
    server.hits = [ft.now] * 60
    client, _ = make(server, ft)

    async def stream() -> list[Any]:
        return await asyncio.gather(*(client.add_tags(f"c{i}", ["t"]) for i in range(200)))

    outs = run(stream())
    assert all(o.ok for o in outs)
    # The first answer corrects the pacer; at most the requests already let through before
    # it (none here: the handler answers synchronously) could be throttled.
    assert server.throttled == 0


# -- a contact HighLevel no longer knows ----------------------------------------------------


@pytest.mark.parametrize(("status", "body", "gone"), [
    (404, {"statusCode": 404, "message": "Contact not found"}, True),
    (400, {"statusCode": 400, "message": "Contact not found"}, True),
    (400, {"statusCode": 400, "message": "The contact with id c1 has been deleted"}, True),
    (422, {"statusCode": 422, "message": ["contact does not exist"], "error": "x"}, True),
    (400, {"statusCode": 400, "message": "body must be a string"}, False),
    (422, {"statusCode": 422, "message": ["tags must be an array"], "error": "x"}, False),
])
def test_contact_gone_is_flagged_on_404_and_on_400_or_422_that_say_so(
        status: int, body: dict[str, Any], gone: bool) -> None:
    client, _ = make(lambda _r: httpx.Response(status, json=body))
    for call in (client.add_tags("c1", ["t"]), client.create_note("c1", "hello"),
                 client.list_notes("c1"), client.get_contact("c1")):
        out = run(call)
        assert out.status == "rejected" and out.http_status == status
        assert out.contact_gone is gone
