"""The Postalytics API v1 side: campaigns, campaign details and offset-paged events.

Checks in order: HTTP Basic with the API key as user name (401 with the documented body),
3 requests/s per key (429), an injected fault when the fault scope includes Postalytics,
then the route. Events are served newest first from each campaign's time-ordered list, so a
page is an index range; events emitted between two page requests shift later pages, exactly
as offset paging over a live list does.

`page_cap` (off by default) serves at most that many events per page whatever PageSize asks,
as a server might; `cap_offset` says whether a page then starts at (PageNumber-1)*PageSize
or at (PageNumber-1)*the number served: which one a real server would use is unknown.
"""

from __future__ import annotations

import base64
import binascii
import math
from enum import StrEnum
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from mailsync.sandbox.faults import (
    FaultPlan,
    Message,
    Receive,
    Scope,
    Send,
    route_of,
    run_with_fault,
    send_json,
)
from mailsync.sandbox.limits import PostalyticsLimits, Stats
from mailsync.sandbox.scenario import Scenario, clean_event, iso, messy_event, offset_indices

INVALID_KEY = {"error": {"message": "Invalid API key. User authentication failed",
                         "status_code": 401}}
MAX_PAGE_SIZE = 100


class CapOffset(StrEnum):
    """Where a page starts when the server serves fewer events than PageSize asks."""

    requested = "requested"
    """(PageNumber-1) * PageSize: pages overlap nothing and skip what the cap left out."""
    served = "served"
    """(PageNumber-1) * the number served: pages follow on from each other."""


def pl_error(status: int, message: str) -> dict[str, Any]:
    """Postalytics' error envelope."""
    return {"error": {"message": message, "status_code": status}}


def basic_user(header: str | None) -> str | None:
    """The user name of an HTTP Basic Authorization header (the API key), if well-formed."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, _ = decoded.partition(":")
    return user


class PostalyticsAPI:
    """The `/postalytics/api/v1` ASGI app."""

    def __init__(self, scenario: Scenario, limits: PostalyticsLimits, faults: FaultPlan,
                 stats: Stats, time_scale: float = 1.0, retry_after: bool = False, *,
                 page_cap: int | None = None, cap_offset: CapOffset = CapOffset.requested
                 ) -> None:
        self.scenario, self.limits, self.faults, self.stats = scenario, limits, faults, stats
        self.time_scale = time_scale
        self.retry_after = retry_after
        self.page_cap = page_cap
        self.cap_offset = cap_offset
        self.router = Router(routes=[
            Route("/campaigns", self.campaigns, methods=["GET"]),
            Route("/campaigns/{id}/details", self.details, methods=["GET"]),
            Route("/campaigns/{id}/events", self.events, methods=["GET"]),
            Route("/campaigns/{id}/events/{dataid}", self.contact_events, methods=["GET"]),
        ])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request through auth, the per-key window and faults, then the router."""
        if scope["type"] != "http":
            await self.router(scope, receive, send)
            return
        route = route_of(self.router, scope)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        key = basic_user(headers.get("authorization"))
        if key != self.scenario.api_key:
            self.stats.request("postalytics", "-", route)
            self.stats.status("postalytics", "-", route, 401)
            await send_json(send, 401, INVALID_KEY)
            return
        # Stats are shown to people and printed by the demo: name the account, not its key.
        who = "account"
        self.stats.request("postalytics", who, route)
        allowed, wait = self.limits.take(key)
        if not allowed:
            self.stats.limited("postalytics", who, route)
            self.stats.status("postalytics", who, route, 429)
            extra = {"Retry-After": str(max(1, math.ceil(wait)))} if self.retry_after else {}
            await send_json(send, 429, pl_error(429, "Too many requests"), extra)
            return
        fault = self.faults.draw("postalytics")
        if fault.kind:
            self.stats.fault("postalytics", who, route, fault.kind)

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.stats.status("postalytics", who, route, message["status"])
            await send(message)

        await run_with_fault(fault, self.faults.spec, self.time_scale, scope, receive, counted,
                             self.router, lambda s: pl_error(s, "Server error"))

    # -- helpers --

    def _serve(self, ev: Any) -> dict[str, Any]:
        return messy_event(ev) if self.scenario.messy else clean_event(ev)

    def _paging(self, request: Request) -> range | Response:
        """The offsets from the newest that a page's parameters ask for, after the page cap;
        an error response for bad parameters."""
        try:
            page = int(request.query_params.get("PageNumber", "1"))
            size = int(request.query_params.get("PageSize", str(MAX_PAGE_SIZE)))
        except ValueError:
            return JSONResponse(pl_error(400, "PageNumber and PageSize must be integers"),
                                status_code=400)
        if page < 1 or size < 1:
            return JSONResponse(pl_error(400, "PageNumber and PageSize must be at least 1"),
                                status_code=400)
        if size > MAX_PAGE_SIZE:
            return JSONResponse(pl_error(400, f"PageSize has a maximum value of {MAX_PAGE_SIZE}"),
                                status_code=400)
        served = min(size, self.page_cap or size)
        step = served if self.cap_offset is CapOffset.served else size
        return range((page - 1) * step, (page - 1) * step + served)

    def _campaign(self, request: Request) -> Any:
        camp = self.scenario.campaign(request.path_params["id"])
        if camp is None:
            return JSONResponse(pl_error(404, "Campaign not found"), status_code=404)
        return camp

    # -- endpoints --

    async def campaigns(self, request: Request) -> Response:
        """GET /campaigns."""
        return JSONResponse([
            {"drop_id": c.drop_id, "name": c.name, "endpoint": f"postcard-{c.country.lower()}",
             "status": 1, "country": c.country, "created_date": iso(c.number * 6 * 3600)}
            for c in self.scenario.campaigns
        ])

    async def details(self, request: Request) -> Response:
        """GET /campaigns/{id}/details."""
        camp = self._campaign(request)
        if isinstance(camp, Response):
            return camp
        return JSONResponse({
            "ContactListId": camp.list_id, "DirectMailDropId": camp.drop_id,
            "DirectMailName": camp.name, "EndPointId": 700 + camp.number, "Status": 1,
            "Country": camp.country, "Quantity": camp.quantity,
        })

    async def events(self, request: Request) -> Response:
        """GET /campaigns/{id}/events?PageNumber=&PageSize=: newest first, offset paging."""
        camp = self._campaign(request)
        if isinstance(camp, Response):
            return camp
        window = self._paging(request)
        if isinstance(window, Response):
            return window
        events = camp.events
        return JSONResponse([self._serve(events[i]) for i in
                             offset_indices(len(events), window.start, len(window))])

    async def contact_events(self, request: Request) -> Response:
        """GET /campaigns/{id}/events/{dataid}: one recipient's events, newest first."""
        camp = self._campaign(request)
        if isinstance(camp, Response):
            return camp
        window = self._paging(request)
        if isinstance(window, Response):
            return window
        try:
            data_id = int(request.path_params["dataid"])
        except ValueError:
            return JSONResponse(pl_error(400, "The contact id must be an integer"),
                                status_code=400)
        mine = camp.by_recipient.get(data_id, [])
        return JSONResponse([self._serve(camp.events[mine[i]]) for i in
                             offset_indices(len(mine), window.start, len(window))])
