"""Pytest fixtures and helpers for tests that talk to the sandbox over real HTTP.

A pytest plugin (tests/conftest.py registers it): ask for the fixtures by name; import the
helpers.

Fixtures: `sandbox` (small, function-scoped, time scale 1), `fast_sandbox` (time scale 0.01),
`messy_sandbox`. Helpers: `hl_client`, `pl_client`, `location`, `assert_conforms`.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from mailsync.sandbox import openapi
from mailsync.sandbox.server import SandboxServer

HL_SERVER = "https://services.leadconnectorhq.com"
VERSION = "2021-07-28"


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """A small in-process sandbox (24 recipients, seed 1, real-time windows)."""
    with SandboxServer(seed=1, contacts=24) as sb:
        yield sb


@pytest.fixture
def fast_sandbox() -> Iterator[SandboxServer]:
    """A small sandbox with every window shrunk 100× (10 s → 0.1 s)."""
    with SandboxServer(seed=1, contacts=24, time_scale=0.01) as sb:
        yield sb


@pytest.fixture
def messy_sandbox() -> Iterator[SandboxServer]:
    """A sandbox serving events in mixed shapes, a share of them malformed on purpose."""
    with SandboxServer(seed=3, contacts=300, messy=True, malformed_rate=0.05) as sb:
        yield sb


def location(sb: SandboxServer, auth: str | None = None, index: int = 0) -> dict[str, Any]:
    """A manifest location entry (optionally the first with this auth kind)."""
    locs = sb.manifest()["locations"]
    if auth is not None:
        locs = [loc for loc in locs if loc["auth"] == auth]
    return locs[index]


def hl_client(sb: SandboxServer, token: str | None = None, *, version: bool = True,
              timeout: float = 10.0) -> httpx.Client:
    """An httpx client for the sandbox's HighLevel API, with bearer token and Version."""
    headers = {"Version": VERSION} if version else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=sb.highlevel_url, headers=headers, timeout=timeout)


def pl_client(sb: SandboxServer, key: str | None = None) -> httpx.Client:
    """An httpx client for the sandbox's Postalytics API with Basic auth (key, empty)."""
    key = key if key is not None else sb.manifest()["postalytics_api_key"]
    return httpx.Client(base_url=sb.postalytics_url, auth=(key, ""), timeout=10)


def contact_of(sb: SandboxServer, location_id: str) -> dict[str, Any]:
    """Some seeded contact of a location."""
    return sb.state(location_id)["contacts"][0]


# -- conformance to the official OpenAPI files (openapi-core, dev-only) ------------------------

class _Req:
    """An httpx.Request seen through openapi-core's Request protocol, at HighLevel's host."""

    def __init__(self, request: httpx.Request) -> None:
        from openapi_core.datatypes import RequestParameters
        from werkzeug.datastructures import Headers, ImmutableMultiDict

        path = request.url.path
        self.host_url = HL_SERVER
        self.path = path[len("/highlevel"):] if path.startswith("/highlevel") else path
        self.full_url_pattern = HL_SERVER + self.path
        self.method = request.method.lower()
        self.body = request.content or None
        self.content_type = request.headers.get("Content-Type", "application/json")
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(parse_qs(request.url.query.decode())),
            header=Headers(dict(request.headers)), cookie=ImmutableMultiDict())


class _Resp:
    def __init__(self, response: httpx.Response) -> None:
        from werkzeug.datastructures import Headers

        self.data = response.content
        self.status_code = response.status_code
        self.content_type = response.headers.get("content-type", "application/json")
        self.headers = Headers(dict(response.headers))


@cache
def _spec(name: str) -> Any:
    from openapi_core import Config, OpenAPI

    path = openapi.resources.files("mailsync.sandbox").joinpath("spec", "apps", name)
    # The official file fails strict spec validation (extra keys in its security schemes).
    return OpenAPI.from_file_path(str(path), config=Config(spec_validator_cls=None))


def assert_conforms(response: httpx.Response, path_template: str,
                    spec_file: str = "apps/contacts.json") -> None:
    """Assert a sandbox answer matches the official spec, with two independent validators.

    openapi-core checks the request and response as a pair; jsonschema (the sandbox's own
    loader) checks the body against the schema documented for the status. Statuses the
    operation does not document (403, 404, 429, 5xx) cannot be checked and fail the assert,
    so callers only pass documented answers.
    """
    method = response.request.method
    documented = openapi.documented_statuses(spec_file, method, path_template)
    assert response.status_code in documented, (response.status_code, documented)
    errors = openapi.validate_response(spec_file, method, path_template,
                                       response.status_code, response.json())
    assert errors == [], errors
    spec = _spec(spec_file.split("/")[-1])
    spec.validate_response(_Req(response.request), _Resp(response))
