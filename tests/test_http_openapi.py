"""Every request the HighLevel client sends is valid against HighLevel's official OpenAPI."""

from __future__ import annotations

import asyncio
import json
from functools import cache
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

from mailsync.clients.auth import InMemoryTokenStore, OAuthTokenAuth
from mailsync.clients.highlevel import HighLevelClient
from mailsync.clients.ratelimit import WindowPacer
from mailsync.store.tokens import StoredToken

# The official files, shipped unchanged with the sandbox (a test below compares them with
# ../shared/ref/highlevel-openapi wherever that checkout of the reference is present).
SPEC_DIR = Path(__file__).parents[1] / "src/mailsync/sandbox/spec"
SHARED_DIR = Path(__file__).parents[2] / "shared/ref/highlevel-openapi"
SERVER = "https://services.leadconnectorhq.com"


def test_shipped_spec_files_are_the_official_ones_unchanged():
    names = ("apps/contacts.json", "apps/oauth.json", "common/common-schemas.json")
    for name in names:
        assert json.loads((SPEC_DIR / name).read_text())  # present and valid JSON
    if SHARED_DIR.exists():
        for name in names:
            assert (SPEC_DIR / name).read_bytes() == (SHARED_DIR / name).read_bytes(), name


@cache
def spec(name: str) -> OpenAPI:
    # The official file does not pass strict spec validation (its security schemes carry
    # extra keys), so only the requests are validated, not the document.
    return OpenAPI.from_file_path(
        str(SPEC_DIR / "apps" / name), config=Config(spec_validator_cls=None)
    )


class OpenAPIRequest:
    """An httpx.Request seen through openapi-core's Request protocol."""

    def __init__(self, request: httpx.Request) -> None:
        self.host_url = f"{request.url.scheme}://{request.url.netloc.decode()}"
        self.path = request.url.path
        self.method = request.method.lower()
        self.body = request.content or None
        self.content_type = request.headers.get("Content-Type", "application/json")
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(parse_qs(request.url.query.decode())),
            header=Headers(dict(request.headers)),
            cookie=ImmutableMultiDict(),
        )


def fake_highlevel(request: httpx.Request) -> httpx.Response:
    path = request.url.path
    if path == "/oauth/token":
        return httpx.Response(200, json={"access_token": "access-new-1", "expires_in": 86399,
                                         "refresh_token": "refresh-new-1"})
    if request.headers.get("Authorization") == "Bearer access-stale":
        return httpx.Response(401, json={"statusCode": 401, "message": "Invalid JWT"})
    if path.endswith("/tags"):
        return httpx.Response(201 if request.method == "POST" else 200, json={"tags": ["t"]})
    if path.endswith("/notes"):
        if request.method == "POST":
            return httpx.Response(201, json={"note": {"id": "n1", "body": "b"}})
        return httpx.Response(200, json={"notes": []})
    if path == "/contacts/search/duplicate":
        return httpx.Response(200, json={"contact": None})
    if path == "/contacts/upsert":
        return httpx.Response(200, json={"new": True, "contact": {"id": "c1"}})
    return httpx.Response(200, json={"contact": {"id": "c1"}})


async def exercise(client: HighLevelClient) -> None:
    await client.add_tags("c1", ["Postalytics Event: Mailed"])
    await client.remove_tags("c1", ["Postalytics Event: Mailed"])
    await client.create_note("c1", "Mailed", title="Postalytics", user_id="u1")
    await client.list_notes("c1")
    await client.get_contact("c1")
    await client.find_contact(email="a+b@example.com", phone="+15555550123")
    await client.upsert_contact({"email": "a@example.com", "firstName": "Ada",
                                 "phone": "+15555550123"})


def recorded(auth: object) -> list[httpx.Request]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return fake_highlevel(request)

    client = HighLevelClient(SERVER, "loc-openapi", auth,  # type: ignore[arg-type]
                             transport=httpx.MockTransport(handler), pacer=WindowPacer())
    asyncio.run(exercise(client))
    return seen


def test_every_contacts_request_matches_the_official_spec() -> None:
    requests = recorded("pit-openapi-token")
    assert len(requests) == 8
    for request in requests:
        spec("contacts.json").validate_request(OpenAPIRequest(request))


def test_oauth_refresh_request_matches_the_official_spec() -> None:
    store = InMemoryTokenStore({"loc-openapi": StoredToken(refresh_token="refresh-old-1",
                                                           access_token="access-stale")})
    auth = OAuthTokenAuth("loc-openapi", "client-id-oa", "client-secret-oa", store)
    requests = recorded(auth)
    token_requests = [r for r in requests if r.url.path == "/oauth/token"]
    assert len(token_requests) == 1
    spec("oauth.json").validate_request(OpenAPIRequest(token_requests[0]))
    for request in requests:
        if request.url.path != "/oauth/token":
            spec("contacts.json").validate_request(OpenAPIRequest(request))


def test_validator_catches_a_bad_request() -> None:
    # Guard against a validator that accepts anything: a note without `body` must fail.
    bad = httpx.Request(
        "POST", f"{SERVER}/contacts/c1/notes", json={"title": "no body"},
        headers={"Version": "2021-07-28", "Authorization": "Bearer x"},
    )
    with pytest.raises(Exception, match=r"(?i)body|schema|valid"):
        spec("contacts.json").validate_request(OpenAPIRequest(bad))
    wrong_version = httpx.Request(
        "POST", f"{SERVER}/contacts/c1/tags", content=json.dumps({"tags": ["a"]}),
        headers={"Version": "2021-04-15", "Authorization": "Bearer x",
                 "Content-Type": "application/json"},
    )
    with pytest.raises(Exception):  # noqa: B017 - any validation error will do
        spec("contacts.json").validate_request(OpenAPIRequest(wrong_version))
    no_auth = httpx.Request("GET", f"{SERVER}/contacts/c1/notes",
                            headers={"Version": "2021-07-28"})
    with pytest.raises(Exception, match=r"(?i)security"):
        spec("contacts.json").validate_request(OpenAPIRequest(no_auth))
