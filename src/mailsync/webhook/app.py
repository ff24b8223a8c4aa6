"""The receiver over HTTP: `POST /postalytics/{drop_id}?key=SECRET`, one URL per campaign.

Answers, in the order they are decided:

- 404 for a wrong or missing key, or a campaign not in the config (one answer for both, and
  the key is compared in constant time: a caller learns nothing about either);
- 413 for a body over 64 KiB (refused as it streams in: never read whole);
- 400 with the reason for a body that is not JSON, not an object, or not an event mailsync
  can store (the last kept in quarantine with its reason);
- 503 when the store cannot be reached: Postalytics retries a failed delivery;
- 202 once the event is committed to the store, whether new or already stored, so a
  redelivery is acknowledged and never written twice. The writes follow (`trigger`).

Neither the key nor a whole body is ever logged: lines name the campaign and the outcome.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailsync.config import CampaignConfig
from mailsync.redact import Secret, get_logger, redact
from mailsync.store.models import utcnow
from mailsync.webhook.receive import Outcome, Received, receive_event
from mailsync.webhook.trigger import Trigger

log = get_logger("mailsync.webhook")

MAX_BODY = 64 * 1024
"""The largest webhook body accepted (Postalytics' payloads are a few KiB)."""
ROUTE = "/postalytics/{drop_id}"
NOT_FOUND = {"error": "not found"}


@dataclass(frozen=True)
class ReceiverConfig:
    """What the receiver needs: the store, the campaigns it serves, the key, the trigger."""

    engine: Engine
    campaigns: Mapping[str, CampaignConfig]
    secret: Secret
    trigger: Trigger
    clock: Callable[[], datetime] = utcnow


def key_matches(given: str | None, secret: Secret) -> bool:
    """Whether the URL's key is the secret, in time independent of where they differ."""
    # compare_digest on equal-length digests: its time depends on neither value's length.
    a = hmac.new(b"mailsync-webhook", (given or "").encode(), "sha256").digest()
    b = hmac.new(b"mailsync-webhook", secret.get().encode(), "sha256").digest()
    return hmac.compare_digest(a, b) and given is not None


class BodyTooLarge(Exception):
    """The body is over MAX_BODY."""


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The body, refused as soon as it is known to be over `limit` (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def _bad_request(reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=400)


def _parse(body: bytes) -> object | JSONResponse:
    """The JSON in the body, or the 400 saying why there is none."""
    if not body.strip():
        return _bad_request("empty body: expected a Postalytics event as JSON")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        kind = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "not JSON"
        return _bad_request(f"body is {kind}: expected a Postalytics event as JSON")


def _answer(drop_id: str, received: Received) -> JSONResponse:
    if received.outcome == Outcome.quarantined:
        return _bad_request(f"not an event mailsync can store: {received.reason}")
    log.debug("webhook for campaign %s: %s", drop_id, received.arrival)
    return JSONResponse({"status": "accepted", "event": str(received.arrival)},
                        status_code=202)


def create_receiver(config: ReceiverConfig) -> Starlette:
    """The receiver's ASGI app."""

    async def postalytics(request: Request) -> Response:
        received_at = config.clock()
        drop_id = request.path_params["drop_id"]
        campaign = config.campaigns.get(drop_id)
        if not key_matches(request.query_params.get("key"), config.secret) or campaign is None:
            log.info("webhook refused: wrong key or unknown campaign (path %s)",
                     redact(request.url.path)[:120])
            return JSONResponse(NOT_FOUND, status_code=404)
        try:
            body = await read_body(request)
        except BodyTooLarge:
            log.info("webhook for campaign %s refused: body over %d bytes", drop_id, MAX_BODY)
            return JSONResponse({"error": f"body over {MAX_BODY} bytes"}, status_code=413)
        raw = _parse(body)
        if isinstance(raw, JSONResponse):
            log.info("webhook for campaign %s refused: not JSON", drop_id)
            return raw
        if not isinstance(raw, dict):
            return _bad_request(f"not an event: a JSON {type(raw).__name__}, expected an object")
        try:
            received = await run_in_threadpool(receive_event, config.engine, campaign, raw,
                                               received_at)
        except SQLAlchemyError as exc:
            log.error("webhook for campaign %s: the store failed: %s", drop_id,
                      type(exc).__name__)
            return JSONResponse({"error": "the store is unavailable; retry"}, status_code=503,
                                headers={"Retry-After": "30"})
        if received.planned:
            config.trigger.notify(campaign.location)
        return _answer(drop_id, received)

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await config.trigger.aclose()

    return Starlette(routes=[Route(ROUTE, postalytics, methods=["POST"]),
                             Route("/healthz", health, methods=["GET"])], lifespan=lifespan)
