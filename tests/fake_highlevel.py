"""A small HighLevel over httpx.MockTransport (tags, notes, contact lookup, fault hooks) and
a real store, for the apply's tests: plan events, apply them, read the ledger back."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlmodel import Session, select

from mailsync.clients.highlevel import HighLevelClient
from mailsync.clients.ratelimit import WindowPacer
from mailsync.config import CampaignConfig
from mailsync.store.models import MailEvent, WriteIntent
from mailsync.store.ops import insert_ignore
from mailsync.sync.apply import ApplyOptions, ApplyResult, apply_location
from mailsync.sync.plan import plan_writes

LOC = "loc-guarantees"
T0 = datetime(2026, 11, 20, 9, tzinfo=UTC)
CAMPAIGN = CampaignConfig(drop_id="500", location=LOC, events=["Mailed", "InTransit"])

Hook = Callable[[httpx.Request], Awaitable[httpx.Response | None]]


@dataclass
class FakeHighLevel:
    """Contacts with tags and notes; `hooks` may answer a request instead (a fault)."""

    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    bodies: list[httpx.Request] = field(default_factory=list)
    hooks: list[Hook] = field(default_factory=list)

    def add(self, cid: str, email: str) -> None:
        self.contacts[cid] = {"id": cid, "email": email, "tags": [], "notes": []}

    def calls(self, method: str, pattern: str) -> int:
        return sum(1 for m, p in self.requests
                   if re.fullmatch(method, m) and re.fullmatch(pattern, p))

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        self.bodies.append(request)
        for hook in self.hooks:
            answer = await hook(request)
            if answer is not None:
                return answer
        return self.route(request)

    def route(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/contacts/search/duplicate":
            email = request.url.params.get("email")
            found = next((c for c in self.contacts.values() if c["email"] == email), None)
            return httpx.Response(200, json={"contact": found and {"id": found["id"],
                                                                   "email": found["email"]}})
        cid, _, what = path.removeprefix("/contacts/").partition("/")
        contact = self.contacts.get(cid)
        if contact is None:
            return httpx.Response(404, json={"statusCode": 404, "message": "Contact not found"})
        if what == "tags":
            contact["tags"] += json.loads(request.content)["tags"]
            return httpx.Response(201, json={"tags": contact["tags"]})
        if request.method == "GET":
            return httpx.Response(200, json={"notes": contact["notes"]})
        note = {"id": f"n{len(contact['notes'])}", "body": json.loads(request.content)["body"]}
        contact["notes"].append(note)
        return httpx.Response(201, json={"note": note})


def client(fake: FakeHighLevel) -> HighLevelClient:
    return HighLevelClient("https://services.leadconnectorhq.com", LOC, "pit-token",
                           transport=httpx.MockTransport(fake), pacer=WindowPacer(),
                           rng=random.Random(1), max_attempts=2,
                           sleep=lambda _s: asyncio.sleep(0))


def plan(engine: Any, events: int, email: str = "ada@example.com",
         contact: str | None = None) -> list[WriteIntent]:
    """Store `events` events of one recipient and the ledger rows they cause."""
    evs = [MailEvent(key=f"e:500:{i}", drop_id="500", recipient_key="d:1",
                     code="Mailed" if i == 0 else "InTransit", event_at=T0 + timedelta(hours=i),
                     email=email, carried_contact_id=contact) for i in range(events)]
    with Session(engine) as s:
        insert_ignore(s, evs)
        insert_ignore(s, plan_writes(evs, CAMPAIGN))
        s.commit()
    return rows(engine)


def rows(engine: Any, kind: str | None = None) -> list[WriteIntent]:
    with Session(engine) as s:
        q = select(WriteIntent).order_by(WriteIntent.id)  # type: ignore[arg-type]
        if kind:
            q = q.where(WriteIntent.kind == kind)
        return list(s.exec(q).all())


def apply(engine: Any, fake: FakeHighLevel, **opts: Any) -> ApplyResult:
    async def go() -> ApplyResult:
        async with client(fake) as hl:
            return await apply_location(engine, hl, LOC, ApplyOptions(**opts))
    return asyncio.run(go())
