"""A HighLevelClient over httpx.MockTransport recording what it sends (the client tests)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import httpx

from mailsync.clients.highlevel import HighLevelClient
from mailsync.clients.ratelimit import WindowPacer
from tests.clock import VirtualTime

BASE = "https://services.leadconnectorhq.com"
LOC = "loc-test-1"
PIT = "pit-static-token-0001"

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """Wraps a handler and keeps every request it saw."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


def make(
    handler: Handler, ft: VirtualTime | None = None, **kw: Any
) -> tuple[HighLevelClient, Recorder]:
    ft = ft or VirtualTime()
    rec = Recorder(handler)
    kw.setdefault("auth", PIT)
    kw.setdefault("pacer", WindowPacer(clock=ft.clock, sleep=ft.sleep))
    client = HighLevelClient(
        BASE, LOC, transport=httpx.MockTransport(rec), sleep=ft.sleep, rng=random.Random(1), **kw
    )
    return client, rec


def tags_ok(request: httpx.Request) -> httpx.Response:
    sent = json.loads(request.content)["tags"]
    return httpx.Response(201, json={"tags": [t.lower() for t in sent] + ["vip"]})


def note_ok(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)["body"]
    return httpx.Response(201, json={"note": {"id": "note-1", "body": body, "contactId": "c1"}})


def sequence(*steps: Any) -> Handler:
    """A handler answering each request with the next step (a Response, or an exception)."""
    it = iter(steps)

    def handler(request: httpx.Request) -> httpx.Response:
        step = next(it)
        if isinstance(step, type) and issubclass(step, Exception):
            raise step("simulated", request=request)
        if callable(step):
            return step(request)
        return step

    return handler
