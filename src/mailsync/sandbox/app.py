"""The sandbox as one Starlette app: Postalytics, HighLevel and the `/_sandbox` admin routes.

Mounted paths: `/postalytics/api/v1/...`, `/highlevel/...`, `/_sandbox/...`. All state lives in
one `Sandbox` object, mutated only on the server's event loop (handlers never await in the
middle of a change), so no locks are needed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from mailsync.sandbox.faults import (
    RAW_SEND,
    ConnectionCut,
    FaultPlan,
    FaultSpec,
    FaultSpecError,
    Receive,
    Scope,
    Send,
)
from mailsync.sandbox.highlevel_api import (
    Auth,
    ContactStore,
    HighLevelAPI,
    HighLevelSettings,
    error_body,
)
from mailsync.sandbox.limits import HighLevelLimits, PostalyticsLimits, Stats
from mailsync.sandbox.postalytics_api import PostalyticsAPI
from mailsync.sandbox.scenario import Event, Scenario, iso
from mailsync.sandbox.webhooks import WebhookOptions, WebhookSender

POSTALYTICS_PREFIX = "/postalytics/api/v1"
HIGHLEVEL_PREFIX = "/highlevel"
ADMIN_PREFIX = "/_sandbox"


@dataclass
class SandboxConfig:
    """Everything that shapes a sandbox; the same config and seed give the same world."""

    seed: int = 1
    contacts: int = 60
    faults: FaultSpec | str | None = None
    time_scale: float = 1.0
    messy: bool = False
    campaigns: int = 3
    locations: int = 3
    oauth_locations: int = 1
    rate_limit: int = 100  # HighLevel requests per (scaled) 10 s window
    daily_quota: int = 200_000  # HighLevel requests per (scaled) day per location
    postalytics_per_second: int = 3
    retry_after: bool = False  # add Retry-After to 429s (neither API documents one)
    whitelist_bodies: bool = True
    malformed_rate: float = 0.03  # share of events served broken when messy
    start_hours: float = 0.0  # advance the clock this far before serving
    canada_every: int = 3  # every Nth campaign is Canadian; 0 for none
    missing_contact_status: int = 404  # what a deleted contact's routes answer (404 or 400)

    def fault_spec(self) -> FaultSpec:
        """The configured faults as a FaultSpec."""
        if isinstance(self.faults, FaultSpec):
            return self.faults
        return FaultSpec.parse(self.faults)


class Sandbox:
    """The state of one sandbox: the scenario, the HighLevel store, windows, faults, stats."""

    def __init__(self, config: SandboxConfig) -> None:
        if config.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.config = config
        self.scenario = Scenario(config.seed, config.contacts, campaigns=config.campaigns,
                                 locations=config.locations,
                                 oauth_locations=config.oauth_locations, messy=config.messy,
                                 malformed_rate=config.malformed_rate,
                                 canada_every=config.canada_every)
        rng = random.Random(f"highlevel:{config.seed}")
        self.store = ContactStore(rng)
        for data in self.scenario.hl_contacts:
            self.store.add(data)
        self.auth = Auth(self.scenario.locations, rng, config.time_scale)
        self.stats = Stats()
        self.faults = FaultPlan(config.seed, config.fault_spec())
        self.hl_limits = HighLevelLimits(time_scale=config.time_scale, limit=config.rate_limit,
                                         daily=config.daily_quota)
        self.pl_limits = PostalyticsLimits(time_scale=config.time_scale,
                                           per_second=config.postalytics_per_second)
        self.highlevel = HighLevelAPI(
            self.store, self.auth, self.hl_limits, self.faults, self.stats,
            HighLevelSettings(time_scale=config.time_scale, retry_after=config.retry_after,
                              whitelist_bodies=config.whitelist_bodies,
                              missing_contact_status=config.missing_contact_status))
        self.postalytics = PostalyticsAPI(self.scenario, self.pl_limits, self.faults,
                                          self.stats, config.time_scale, config.retry_after)
        self.webhooks = WebhookSender(seed=config.seed)
        if config.start_hours:
            self.scenario.advance(config.start_hours)

    def advance(self, hours: float) -> tuple[int, int]:
        """Move the mail clock; the new events go to the campaigns' webhook URLs, oldest
        first. Returns (events emitted, webhook deliveries queued)."""
        before = [len(c.events) for c in self.scenario.campaigns]
        emitted = self.scenario.advance(hours)
        new: list[Event] = []
        for camp, start in zip(self.scenario.campaigns, before, strict=True):
            new += camp.events[start:]
        new.sort(key=lambda e: e.at)
        return emitted, self.webhooks.enqueue(new)

    # -- admin views --

    def manifest(self, base_url: str) -> dict[str, Any]:
        """Where everything is and how to authenticate (see docs/sandbox.md)."""
        base = base_url.rstrip("/")
        locations = []
        for loc in self.scenario.locations:
            la = self.auth.locations[loc.id]
            entry: dict[str, Any] = {"id": loc.id, "name": loc.name, "token": la.token,
                                     "auth": la.auth}
            if la.auth == "oauth":
                entry.update(client_id=self.auth.client_id,
                             client_secret=self.auth.client_secret,
                             refresh_token=la.refresh_token)
            locations.append(entry)
        return {
            "postalytics_base_url": base + POSTALYTICS_PREFIX,
            "postalytics_api_key": self.scenario.api_key,
            "highlevel_base_url": base + HIGHLEVEL_PREFIX,
            "locations": locations,
            "campaigns": [c.to_json() for c in self.scenario.campaigns],
            "clock": iso(self.scenario.clock),
            "seed": self.config.seed,
            "time_scale": self.config.time_scale,
            "messy": self.config.messy,
        }

    def truth(self, drop_id: str | None = None) -> dict[str, Any]:
        """Every event emitted so far, per campaign, oldest first, in normalised form."""
        camps = [c for c in self.scenario.campaigns if drop_id in (None, str(c.drop_id))]
        return {
            "clock": iso(self.scenario.clock),
            "campaigns": [{**c.to_json(), "events": [e.to_truth() for e in c.events]}
                          for c in camps],
        }

    def recipient_now(self, recipient: Any) -> dict[str, Any]:
        """A recipient record with the contact it is *now*: contacts created or deleted
        after the scenario began (support fixing a problem, an upsert) change the truth."""
        out = recipient.to_json()
        cid = out["hl_contact_id"]
        if cid is not None and cid not in self.store.contacts:
            out["hl_contact_id"], out["match"] = None, "deleted"
        if out["hl_contact_id"] is None:
            found = self.store.find(recipient.location_id, recipient.email, recipient.phone)
            if found is not None:
                out["hl_contact_id"], out["match"] = found.id, "created"
        return out

    def hl_state(self, location: str | None = None) -> dict[str, Any]:
        """Every HighLevel contact with its tags and notes."""
        return {"contacts": [c.to_state() for c in self.store.contacts.values()
                             if location in (None, c.location_id)]}

    def stats_view(self) -> dict[str, Any]:
        """Counters plus the last request violations."""
        return {**self.stats.data, "violations": list(self.highlevel.violations),
                "faults": self.faults.spec.to_json(), "clock": iso(self.scenario.clock)}


class SandboxApp:
    """The outermost ASGI app; `.sandbox` is the state.

    It keeps the server's own `send` in the scope (so a fault can cut the TCP connection) and
    swallows the ConnectionCut that follows, so uvicorn logs nothing for a deliberate cut.
    """

    def __init__(self, app: Starlette, sandbox: Sandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[RAW_SEND] = send
        try:
            await self.app(scope, receive, send)
        except ConnectionCut:
            return


def _json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    data = await request.json()
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def _admin_routes(sb: Sandbox) -> list[Route]:
    async def manifest(request: Request) -> Response:
        return JSONResponse(sb.manifest(str(request.base_url)))

    async def clock(request: Request) -> Response:
        return JSONResponse({"clock": iso(sb.scenario.clock), "emitted": sb.scenario.emitted,
                             "scheduled": sb.scenario.scheduled})

    async def advance(request: Request) -> Response:
        try:
            body = await _json_body(request)
            hours = float(request.query_params.get("hours", body.get("hours", 0)))
            emitted, queued = sb.advance(hours)
        except ValueError as exc:
            return _json_error(400, str(exc))
        return JSONResponse({"clock": iso(sb.scenario.clock), "emitted": emitted,
                             "total": sb.scenario.emitted,
                             "remaining": sb.scenario.scheduled - sb.scenario.emitted,
                             "webhooks_queued": queued})

    async def hl_state(request: Request) -> Response:
        return JSONResponse(sb.hl_state(request.query_params.get("location")))

    async def truth(request: Request) -> Response:
        return JSONResponse(sb.truth(request.query_params.get("drop_id")))

    async def recipients(request: Request) -> Response:
        drop = request.query_params.get("drop_id")
        return JSONResponse({"recipients": [sb.recipient_now(r) for r in sb.scenario.recipients
                                            if drop in (None, str(r.drop_id))]})

    async def stats(request: Request) -> Response:
        return JSONResponse(sb.stats_view())

    async def stats_reset(request: Request) -> Response:
        sb.stats.reset()
        sb.highlevel.violations.clear()
        return JSONResponse(sb.stats_view())

    async def limits_reset(request: Request) -> Response:
        sb.hl_limits.reset()
        sb.pl_limits.reset()
        return JSONResponse({"reset": True})

    async def faults(request: Request) -> Response:
        if request.method == "POST":
            try:
                body = await _json_body(request)
                sb.faults.set(FaultSpec.from_mapping(body))
            except (FaultSpecError, ValueError) as exc:
                return _json_error(400, str(exc))
        return JSONResponse(sb.faults.spec.to_json())

    def _location(request: Request) -> str | None:
        loc = request.path_params["location_id"]
        return loc if loc in sb.auth.locations else None

    async def location_action(request: Request) -> Response:
        loc = _location(request)
        if loc is None:
            return _json_error(404, "unknown location")
        action = request.path_params["action"]
        la = sb.auth.locations[loc]
        if action == "revoke":
            la.revoked = True
        elif action == "restore":
            la.revoked = False
        elif action == "expire-token":
            if la.auth != "oauth":
                return _json_error(400, "only OAuth locations have expiring tokens")
            sb.auth.expire(loc)
        elif action == "quota":
            try:
                body = await _json_body(request)
                sb.hl_limits.set_daily_remaining(loc, int(body["daily_remaining"]))
            except (KeyError, TypeError, ValueError):
                return _json_error(400, 'expected {"daily_remaining": <int>}')
        else:
            return _json_error(404, f"unknown action {action!r}")
        return JSONResponse({"location": loc, "auth": la.auth, "revoked": la.revoked,
                             "token": la.token})

    async def reject_notes(request: Request) -> Response:
        try:
            body = await _json_body(request)
        except ValueError as exc:
            return _json_error(400, str(exc))
        ids = body.get("contact_ids")
        if request.method == "DELETE":
            if ids is None:
                sb.store.reject_notes.clear()
            else:
                for cid in ids:
                    sb.store.reject_notes.pop(cid, None)
        else:
            if not isinstance(ids, list):
                return _json_error(400, 'expected {"contact_ids": [...], "message": [...]}')
            message = body.get("message") or ["body must be shorter than the sandbox allows"]
            if isinstance(message, str):
                message = [message]
            for cid in ids:
                sb.store.reject_notes[str(cid)] = list(message)
        return JSONResponse({"reject_notes": sb.store.reject_notes})

    async def create_contact(request: Request) -> Response:
        try:
            body = await _json_body(request)
        except ValueError as exc:
            return _json_error(400, str(exc))
        if body.get("locationId") not in sb.auth.locations:
            return _json_error(400, "locationId must name a sandbox location")
        contact = sb.store.add(body)
        return JSONResponse(contact.to_state(), status_code=201)

    async def delete_contact(request: Request) -> Response:
        if not sb.store.delete(request.path_params["contact_id"]):
            return JSONResponse(error_body(404, "Contact not found"), status_code=404)
        return JSONResponse({"deleted": request.path_params["contact_id"]})

    async def webhooks(request: Request) -> Response:
        if request.method == "POST":
            try:
                body = await _json_body(request)
                urls = body.get("urls")
                if not isinstance(urls, dict) or not urls:
                    raise ValueError('expected {"urls": {"<drop_id>": "<url>", ...}, '
                                     '"options": {...}}')
                options = WebhookOptions.from_mapping(body.get("options") or {})
            except (TypeError, ValueError) as exc:
                return _json_error(400, str(exc))
            sb.webhooks.configure(urls, options)
        elif request.method == "DELETE":
            sb.webhooks.urls = {}
        return JSONResponse(sb.webhooks.view(request.query_params.get("log") == "1"))

    async def violations(request: Request) -> Response:
        return JSONResponse({"violations": list(sb.highlevel.violations)})

    return [
        Route("/manifest", manifest, methods=["GET"]),
        Route("/clock", clock, methods=["GET"]),
        Route("/advance", advance, methods=["POST"]),
        Route("/highlevel/state", hl_state, methods=["GET"]),
        Route("/highlevel/violations", violations, methods=["GET"]),
        Route("/highlevel/contacts", create_contact, methods=["POST"]),
        Route("/highlevel/contacts/{contact_id}", delete_contact, methods=["DELETE"]),
        Route("/highlevel/reject-notes", reject_notes, methods=["POST", "DELETE"]),
        Route("/highlevel/locations/{location_id}/{action}", location_action, methods=["POST"]),
        Route("/postalytics/events", truth, methods=["GET"]),
        Route("/postalytics/recipients", recipients, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/stats/reset", stats_reset, methods=["POST"]),
        Route("/limits/reset", limits_reset, methods=["POST"]),
        Route("/faults", faults, methods=["GET", "POST"]),
        Route("/webhooks", webhooks, methods=["GET", "POST", "DELETE"]),
    ]


def create_app(config: SandboxConfig | None = None, *,
               sandbox: Sandbox | None = None) -> SandboxApp:
    """The ASGI app serving both APIs and the admin routes; `app.sandbox` is the state."""
    sb = sandbox or Sandbox(config or SandboxConfig())
    inner = Starlette(routes=[
        Mount(POSTALYTICS_PREFIX, app=sb.postalytics),
        Mount(HIGHLEVEL_PREFIX, app=sb.highlevel),
        Mount(ADMIN_PREFIX, routes=_admin_routes(sb)),
    ])
    return SandboxApp(inner, sb)
