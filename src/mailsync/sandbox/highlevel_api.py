"""The HighLevel (LeadConnector v2) side: contacts, tags, notes, lookup, upsert, OAuth refresh.

Order of checks for every request, as HighLevel's gateway and NestJS guards/pipes do it:
authentication (401) → rate windows (429) → injected fault → request validation against the
official OpenAPI file (422, logged) → location access (403) → the operation itself. The five
`X-RateLimit-*` headers are added to every answer, including 401s and faults.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from mailsync.sandbox import openapi
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
from mailsync.sandbox.limits import HighLevelLimits, Stats
from mailsync.sandbox.scenario import Location

log = logging.getLogger("mailsync.sandbox.highlevel")

CONTACTS = "apps/contacts.json"
OAUTH = "apps/oauth.json"
API_VERSION = "2021-07-28"
FORBIDDEN_LOCATION = "The token does not have access to this location."
ACCESS_TOKEN_SECONDS = 86_399
REPEAT_REFRESH_SECONDS = 30.0
ANONYMOUS = "-"  # the rate bucket for answers that have no location (401s, token route)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def phone_key(phone: str | None) -> str | None:
    """Digits of a phone number, last ten (so +1 (617) 555-0100 matches 6175550100)."""
    if not phone:
        return None
    digits = "".join(ch for ch in phone if ch.isdigit())
    return digits[-10:] if digits else None


def error_body(status: int, message: str | list[str] | None = None) -> dict[str, Any]:
    """Error bodies shaped as common-schemas.json documents them (422: message is a list)."""
    names = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
             422: "Unprocessable Entity", 429: "Too Many Requests",
             500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
    name = names.get(status, "Error")
    if status == 422:
        msgs = message if isinstance(message, list) else [message or name]
        return {"statusCode": 422, "message": msgs, "error": name}
    text = message if isinstance(message, str) else name
    if status == 400:
        return {"statusCode": 400, "message": text}
    return {"statusCode": status, "message": text, "error": name}


# -- the store -----------------------------------------------------------------------------

@dataclass
class Contact:
    """A HighLevel contact with its tags (stored lower-cased) and notes."""

    id: str
    location_id: str
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    tags: list[str] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None
    address1: str | None = None
    source: str | None = None
    date_added: str = field(default_factory=_now_iso)
    date_updated: str = field(default_factory=_now_iso)
    tag_added: dict[str, str] = field(default_factory=dict)
    """When each tag was last added (wall clock): how late a webhook's tag came, for the
    latency benchmark. Admin view only; the API does not show it."""

    def to_api(self) -> dict[str, Any]:
        """The contact as the API returns it; absent fields are left out (the spec has no nulls)."""
        out: dict[str, Any] = {
            "id": self.id, "locationId": self.location_id, "firstName": self.first_name,
            "lastName": self.last_name, "email": self.email,
            "emailLowerCase": self.email.lower() if self.email else None,
            "phone": self.phone, "tags": list(self.tags), "address1": self.address1,
            "city": self.city, "state": self.state, "postalCode": self.postal_code,
            "country": self.country, "source": self.source, "dateAdded": self.date_added,
            "dateUpdated": self.date_updated,
        }
        name = " ".join(p for p in (self.first_name, self.last_name) if p)
        if name:
            out["name"] = name
        return {k: v for k, v in out.items() if v is not None}

    def to_state(self) -> dict[str, Any]:
        """The admin view: everything, notes included."""
        return {"id": self.id, "locationId": self.location_id, "firstName": self.first_name,
                "lastName": self.last_name, "email": self.email, "phone": self.phone,
                "tags": list(self.tags), "notes": list(self.notes),
                "dateAdded": self.date_added, "dateUpdated": self.date_updated,
                "tagsAddedAt": dict(self.tag_added)}


_CONTACT_FIELDS = {"firstName": "first_name", "lastName": "last_name", "email": "email",
                   "phone": "phone", "city": "city", "state": "state",
                   "postalCode": "postal_code", "country": "country", "address1": "address1",
                   "source": "source"}


class ContactStore:
    """All contacts of all locations, indexed for the duplicate search (email, phone digits)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.contacts: dict[str, Contact] = {}
        self.reject_notes: dict[str, list[str]] = {}
        # (location, key) -> contact ids in creation order; the oldest wins a lookup.
        self._by_email: dict[tuple[str, str], list[str]] = {}
        self._by_phone: dict[tuple[str, str], list[str]] = {}

    def new_id(self) -> str:
        """A fresh 20-character id."""
        return "".join(self._rng.choices(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=20))

    def _keys(self, c: Contact) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
        ekey = (c.location_id, c.email.strip().lower()) if c.email else None
        pk = phone_key(c.phone)
        return ekey, ((c.location_id, pk) if pk else None)

    def _unindex(self, c: Contact) -> None:
        ekey, pkey = self._keys(c)
        for index, key in ((self._by_email, ekey), (self._by_phone, pkey)):
            if key is not None and c.id in index.get(key, ()):
                index[key].remove(c.id)

    def _index(self, c: Contact) -> None:
        ekey, pkey = self._keys(c)
        for index, key in ((self._by_email, ekey), (self._by_phone, pkey)):
            if key is not None:
                index.setdefault(key, []).append(c.id)

    def add(self, data: dict[str, Any]) -> Contact:
        """Create a contact from API-style (camelCase) fields; tags are lower-cased."""
        contact = Contact(id=data.get("id") or self.new_id(), location_id=data["locationId"])
        self.contacts[contact.id] = contact
        self.update(contact, data)
        return contact

    def update(self, contact: Contact, data: dict[str, Any]) -> None:
        """Apply API-style fields; `tags` replaces every tag, as upsert does."""
        self._unindex(contact)
        for api_name, attr in _CONTACT_FIELDS.items():
            if api_name in data:
                setattr(contact, attr, data[api_name])
        if "tags" in data and data["tags"] is not None:
            contact.tags = []
            add_tags(contact, data["tags"])
        contact.date_updated = _now_iso()
        self._index(contact)

    def delete(self, contact_id: str) -> bool:
        """Remove a contact (admin); False if there was none."""
        contact = self.contacts.pop(contact_id, None)
        if contact is None:
            return False
        self._unindex(contact)
        return True

    def find(self, location_id: str, email: str | None, phone: str | None) -> Contact | None:
        """The duplicate search: by email (case-insensitive), then by phone digits."""
        if email and email.strip():
            ids = self._by_email.get((location_id, email.strip().lower()))
            if ids:
                return self.contacts[ids[0]]
        key = phone_key(phone)
        if key:
            ids = self._by_phone.get((location_id, key))
            if ids:
                return self.contacts[ids[0]]
        return None


def add_tags(contact: Contact, tags: list[str]) -> int:
    """Add tags lower-cased (HighLevel's observed storage), skipping ones already there."""
    have = set(contact.tags)
    added = 0
    for tag in tags:
        t = " ".join(tag.split()).lower()
        if t and t not in have:
            contact.tags.append(t)
            contact.tag_added[t] = _now_iso()
            have.add(t)
            added += 1
    return added


# -- tokens --------------------------------------------------------------------------------

@dataclass
class LocationAuth:
    """How one location authenticates, and its current token(s)."""

    location_id: str
    auth: str  # "pit" | "oauth"
    token: str  # the PIT, or the current OAuth access token
    refresh_token: str | None = None
    revoked: bool = False
    previous_refresh: str | None = None
    rotated_at: float = -math.inf
    last_grant: dict[str, Any] | None = None


@dataclass
class _Token:
    location_id: str
    expires_at: float  # monotonic; inf for a PIT


class Auth:
    """Bearer tokens per location; OAuth locations refresh through `/oauth/token`."""

    def __init__(self, locations: list[Location], rng: random.Random, time_scale: float,
                 clock: Any = time.monotonic) -> None:
        self._rng = rng
        self.time_scale = time_scale
        self.clock = clock
        self.client_id = "sandbox-app-" + self._hex(12)
        self.client_secret = "secret-" + self._hex(24)
        self.company_id = "company" + self._hex(13)
        self.locations: dict[str, LocationAuth] = {}
        self.tokens: dict[str, _Token] = {}
        for loc in locations:
            if loc.auth == "oauth":
                la = LocationAuth(loc.id, "oauth", "", refresh_token="rt-" + self._hex(32))
                self._issue_access(la)
            else:
                la = LocationAuth(loc.id, "pit", "pit-" + self._hex(32))
                self.tokens[la.token] = _Token(loc.id, math.inf)
            self.locations[loc.id] = la

    def _hex(self, n: int) -> str:
        return "".join(self._rng.choices("0123456789abcdef", k=n))

    @property
    def access_seconds(self) -> float:
        """Scaled lifetime of an OAuth access token."""
        return ACCESS_TOKEN_SECONDS * self.time_scale

    def _issue_access(self, la: LocationAuth) -> None:
        la.token = "oat-" + self._hex(32)
        self.tokens[la.token] = _Token(la.location_id, self.clock() + self.access_seconds)

    def check(self, token: str | None) -> tuple[str | None, str]:
        """The location a bearer token belongs to, or (None, the 401 message)."""
        if not token:
            return None, "Invalid token: access token is invalid"
        info = self.tokens.get(token)
        if info is None:
            return None, "Invalid token: access token is invalid"
        if self.locations[info.location_id].revoked:
            return None, "Invalid token: access token is invalid"
        if self.clock() >= info.expires_at:
            return None, "Invalid JWT"
        return info.location_id, ""

    def expire(self, location_id: str) -> None:
        """Expire every access token of an OAuth location now (the next call gets 401)."""
        now = self.clock()
        for info in self.tokens.values():
            if info.location_id == location_id and info.expires_at != math.inf:
                info.expires_at = now

    def refresh(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The refresh_token grant: rotate the refresh token and issue a new access token.

        A repeat of the just-rotated refresh token within 30 s (not scaled: it is how long a
        client may take to retry a lost answer, which no time scale shortens) gets the same pair
        back, as HighLevel does for concurrent refreshes; any other old token is refused.
        """
        if (form.get("client_id"), form.get("client_secret")) != (self.client_id,
                                                                   self.client_secret):
            return 401, error_body(401, "Invalid client credentials")
        if form.get("grant_type") != "refresh_token":
            return 400, error_body(400, "The sandbox supports grant_type=refresh_token only")
        if form.get("user_type", "Location") != "Location":
            return 400, error_body(400, "The sandbox issues Location tokens only")
        presented = form.get("refresh_token") or ""
        now = self.clock()
        for la in self.locations.values():
            if la.auth != "oauth" or la.revoked:
                continue
            if presented == la.refresh_token:
                la.previous_refresh, la.rotated_at = la.refresh_token, now
                la.refresh_token = "rt-" + self._hex(32)
                self._issue_access(la)
                la.last_grant = self._grant(la)
                return 200, la.last_grant
            if (presented == la.previous_refresh and la.last_grant is not None
                    and now - la.rotated_at < REPEAT_REFRESH_SECONDS):
                return 200, la.last_grant
        body = error_body(400, "Invalid grant: refresh token is invalid")
        body["error"] = "invalid_grant"
        return 400, body

    def _grant(self, la: LocationAuth) -> dict[str, Any]:
        return {"access_token": la.token, "token_type": "Bearer",
                "expires_in": max(1, round(self.access_seconds)),
                "refresh_token": la.refresh_token, "scope": "contacts.readonly contacts.write",
                "userType": "Location", "locationId": la.location_id,
                "companyId": self.company_id, "userId": "sandbox-user-" + la.location_id[:8]}


# -- the API -------------------------------------------------------------------------------

@dataclass
class HighLevelSettings:
    """Knobs of the HighLevel simulation."""

    time_scale: float = 1.0
    retry_after: bool = False  # add Retry-After to real 429s (HighLevel documents none)
    whitelist_bodies: bool = True  # NestJS-style "property X should not exist"
    missing_contact_status: int = 404  # HighLevel is also seen answering 400 "Contact not found"


class HighLevelAPI:
    """The `/highlevel` ASGI app: the gate (auth, limits, faults) in front of a router."""

    def __init__(self, store: ContactStore, auth: Auth, limits: HighLevelLimits,
                 faults: FaultPlan, stats: Stats, settings: HighLevelSettings) -> None:
        self.store, self.auth, self.limits = store, auth, limits
        self.faults, self.stats, self.settings = faults, stats, settings
        self.violations: deque[dict[str, Any]] = deque(maxlen=500)
        self.router = Router(routes=[
            Route("/oauth/token", self.oauth_token, methods=["POST"]),
            Route("/contacts/search/duplicate", self.duplicate, methods=["GET"]),
            Route("/contacts/upsert", self.upsert, methods=["POST"]),
            Route("/contacts/{contactId}", self.get_contact, methods=["GET"]),
            Route("/contacts/{contactId}/tags", self.add_tags, methods=["POST"]),
            Route("/contacts/{contactId}/tags", self.remove_tags, methods=["DELETE"]),
            Route("/contacts/{contactId}/notes", self.list_notes, methods=["GET"]),
            Route("/contacts/{contactId}/notes", self.create_note, methods=["POST"]),
            Route("/contacts/{contactId}/notes/{id}", self.get_note, methods=["GET"]),
            Route("/contacts/{contactId}/notes/{id}", self.delete_note, methods=["DELETE"]),
        ])

    # -- gate --

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request through auth, limits and faults, then the router."""
        if scope["type"] != "http":
            await self.router(scope, receive, send)
            return
        route = route_of(self.router, scope)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        token = headers.get("authorization", "")
        token = token[7:].strip() if token.lower().startswith("bearer ") else None
        location: str | None = None
        if route == "POST /oauth/token":
            rate_headers = self.limits.peek(ANONYMOUS)
        else:
            location, message = self.auth.check(token)
            if location is None:
                self.stats.request("highlevel", ANONYMOUS, route)
                self.stats.status("highlevel", ANONYMOUS, route, 401)
                await send_json(send, 401, error_body(401, message), self.limits.peek(ANONYMOUS))
                return
            verdict = self.limits.take(location)
            rate_headers = verdict.headers
            if not verdict.allowed:
                self.stats.request("highlevel", location, route)
                self.stats.limited("highlevel", location, route)
                self.stats.status("highlevel", location, route, 429)
                extra = dict(rate_headers)
                if self.settings.retry_after:
                    extra["Retry-After"] = str(max(1, math.ceil(verdict.retry_after)))
                body = error_body(429, "Too many requests" if verdict.reason == "window"
                                  else "Daily request quota exhausted for this location")
                await send_json(send, 429, body, extra)
                return
        who = location or ANONYMOUS
        self.stats.request("highlevel", who, route)
        scope.setdefault("state", {})["hl_location"] = location
        fault = self.faults.draw("highlevel")
        if fault.kind:
            self.stats.fault("highlevel", who, route, fault.kind)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                raw += [(k.lower().encode(), v.encode()) for k, v in rate_headers.items()]
                message = {**message, "headers": raw}
                self.stats.status("highlevel", who, route, message["status"])
            await send(message)

        await run_with_fault(fault, self.faults.spec, self.settings.time_scale, scope, receive,
                             with_headers, self.router, lambda s: error_body(s), rate_headers)

    # -- helpers --

    def _violation(self, request: Request, template: str, errors: list[str]) -> Response:
        entry = {"method": request.method, "path": template, "url": str(request.url.path),
                 "errors": errors}
        self.violations.append(entry)
        log.warning("request violates the HighLevel OpenAPI file: %s %s: %s",
                    request.method, template, "; ".join(errors))
        return JSONResponse(error_body(422, errors), status_code=422)

    async def _validated(self, request: Request, template: str,
                         spec_file: str = CONTACTS) -> tuple[Any, Response | None]:
        """Parse and validate a request; return (body, None) or (None, error response)."""
        raw = await request.body()
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
        body: Any = None
        has_body = bool(raw)
        if has_body:
            if ctype == "application/x-www-form-urlencoded":
                body = dict(parse_qsl(raw.decode(), keep_blank_values=True))
            else:
                try:
                    body = json.loads(raw)
                except ValueError:
                    return None, JSONResponse(error_body(400, "Unexpected token in JSON body"),
                                              status_code=400)
        errors = openapi.validate_request(
            spec_file, request.method, template, headers=dict(request.headers),
            query=dict(request.query_params), path_params=dict(request.path_params),
            body=body, has_body=has_body, content_type=ctype or "application/json",
            whitelist=self.settings.whitelist_bodies)
        if errors:
            return None, self._violation(request, template, errors)
        return body, None

    def _contact(self, request: Request) -> tuple[Contact | None, Response | None]:
        contact = self.store.contacts.get(request.path_params["contactId"])
        if contact is None:
            status = self.settings.missing_contact_status
            return None, JSONResponse(error_body(status, "Contact not found"), status_code=status)
        if contact.location_id != request.scope["state"]["hl_location"]:
            return None, JSONResponse(error_body(403, FORBIDDEN_LOCATION), status_code=403)
        return contact, None

    async def _gated(self, request: Request, template: str
                     ) -> tuple[Any, Contact | None, Response | None]:
        """A validated request on an existing contact of the token's location."""
        body, err = await self._validated(request, template)
        if err:
            return None, None, err
        contact, err = self._contact(request)
        return body, contact, err

    def _location_matches(self, request: Request, location_id: str) -> Response | None:
        if location_id != request.scope["state"]["hl_location"]:
            return JSONResponse(error_body(403, FORBIDDEN_LOCATION), status_code=403)
        return None

    # -- endpoints --

    async def oauth_token(self, request: Request) -> Response:
        """POST /oauth/token (form-encoded refresh)."""
        form, err = await self._validated(request, "/oauth/token", OAUTH)
        if err:
            return err
        status, body = self.auth.refresh(form or {})
        return JSONResponse(body, status_code=status)

    async def duplicate(self, request: Request) -> Response:
        """GET /contacts/search/duplicate?locationId=&email=&number=."""
        _, err = await self._validated(request, "/contacts/search/duplicate")
        if err:
            return err
        q = request.query_params
        err = self._location_matches(request, q["locationId"])
        if err:
            return err
        if not q.get("email") and not q.get("number"):
            return JSONResponse(error_body(400, "Either email or number is required"),
                                status_code=400)
        found = self.store.find(q["locationId"], q.get("email"), q.get("number"))
        return JSONResponse({"contact": found.to_api() if found else None})

    async def upsert(self, request: Request) -> Response:
        """POST /contacts/upsert: match by email then phone; tags only change when sent."""
        body, err = await self._validated(request, "/contacts/upsert")
        if err:
            return err
        err = self._location_matches(request, body["locationId"])
        if err:
            return err
        found = self.store.find(body["locationId"], body.get("email"), body.get("phone"))
        if found is None:
            found = self.store.add({k: v for k, v in body.items() if k != "id"})
            self.stats.write("contacts_created")
            new = True
        else:
            self.store.update(found, body)
            self.stats.write("contacts_updated")
            new = False
        return JSONResponse({"new": new, "contact": found.to_api(), "traceId": str(uuid.uuid4())})

    async def get_contact(self, request: Request) -> Response:
        """GET /contacts/{contactId}."""
        _, contact, err = await self._gated(request, "/contacts/{contactId}")
        if err:
            return err
        assert contact is not None
        return JSONResponse({"contact": contact.to_api()})

    async def add_tags(self, request: Request) -> Response:
        """POST /contacts/{contactId}/tags → 201 with every tag now on the contact."""
        body, contact, err = await self._gated(request, "/contacts/{contactId}/tags")
        if err:
            return err
        assert contact is not None
        self.stats.write("tags_added", add_tags(contact, body["tags"]))
        contact.date_updated = _now_iso()
        return JSONResponse({"tags": list(contact.tags)}, status_code=201)

    async def remove_tags(self, request: Request) -> Response:
        """DELETE /contacts/{contactId}/tags with a JSON body → 200 with the remaining tags."""
        body, contact, err = await self._gated(request, "/contacts/{contactId}/tags")
        if err:
            return err
        assert contact is not None
        drop = {" ".join(t.split()).lower() for t in body["tags"]}
        before = len(contact.tags)
        contact.tags = [t for t in contact.tags if t not in drop]
        self.stats.write("tags_removed", before - len(contact.tags))
        contact.date_updated = _now_iso()
        return JSONResponse({"tags": list(contact.tags)})

    async def list_notes(self, request: Request) -> Response:
        """GET /contacts/{contactId}/notes: every note, newest first, no paging."""
        _, contact, err = await self._gated(request, "/contacts/{contactId}/notes")
        if err:
            return err
        assert contact is not None
        return JSONResponse({"notes": list(reversed(contact.notes))})

    async def create_note(self, request: Request) -> Response:
        """POST /contacts/{contactId}/notes → 201 {note}; or a configured 422."""
        body, contact, err = await self._gated(request, "/contacts/{contactId}/notes")
        if err:
            return err
        assert contact is not None
        rejection = self.store.reject_notes.get(contact.id)
        if rejection is not None:
            return JSONResponse(error_body(422, rejection), status_code=422)
        note: dict[str, Any] = {"id": self.store.new_id(), "body": body["body"],
                                "dateAdded": _now_iso(), "contactId": contact.id}
        for key in ("userId", "title", "color", "pinned"):
            if key in body:
                note[key] = body[key]
        contact.notes.append(note)
        self.stats.write("notes_created")
        return JSONResponse({"note": note}, status_code=201)

    async def get_note(self, request: Request) -> Response:
        """GET /contacts/{contactId}/notes/{id}."""
        _, contact, err = await self._gated(request, "/contacts/{contactId}/notes/{id}")
        if err:
            return err
        assert contact is not None
        for note in contact.notes:
            if note["id"] == request.path_params["id"]:
                return JSONResponse({"note": note})
        return JSONResponse(error_body(404, "Note not found"), status_code=404)

    async def delete_note(self, request: Request) -> Response:
        """DELETE /contacts/{contactId}/notes/{id}."""
        _, contact, err = await self._gated(request, "/contacts/{contactId}/notes/{id}")
        if err:
            return err
        assert contact is not None
        kept = [n for n in contact.notes if n["id"] != request.path_params["id"]]
        if len(kept) == len(contact.notes):
            return JSONResponse(error_body(404, "Note not found"), status_code=404)
        contact.notes = kept
        return JSONResponse({"succeded": True})
