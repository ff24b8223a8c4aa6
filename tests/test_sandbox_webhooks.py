"""The sandbox's webhook deliveries: the documented payload, and each misbehaviour on demand."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mailsync.codes import WEBHOOK_TYPE, parse_code
from mailsync.sandbox.server import SandboxServer
from tests.webhook_helpers import ReceiverServer

DOCUMENTED = {"mailId", "eventDate", "expectedDeliveryDate", "eventType", "status",
              "statusDescription", "retryAttempts", "To", "meta"}


class Recorder:
    """A webhook endpoint that records bodies and fails the first tries it is told to."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def app(self) -> Starlette:
        async def hook(request: Request) -> JSONResponse:
            body = await request.json()
            with self.lock:
                self.bodies.append(body)
                fail = body["retryAttempts"] < self.fail_first
            return JSONResponse({}, status_code=500 if fail else 202)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


def deliver(recorder: Recorder, **options: Any) -> tuple[SandboxServer, dict[str, Any]]:
    sb = SandboxServer(seed=2, contacts=30, time_scale=0.05).start()
    with ReceiverServer(recorder.app()) as rs:
        drop = sb.manifest()["campaigns"][0]["drop_id"]
        sb.set_webhooks({drop: rs.url + "/hook"}, **options)
        sb.advance(40)
        view = sb.wait_webhooks()
        view["drop"] = drop
        view["log"] = sb.webhooks(log=True)["log"]
        view["truth"] = sb.truth(drop)["campaigns"][0]["events"]
    sb.stop()
    return sb, view


def test_each_new_event_is_posted_once_in_time_order_with_the_documented_payload():
    rec = Recorder()
    _, view = deliver(rec, concurrency=1)
    truth = view["truth"]
    assert len(rec.bodies) == len(truth) > 20
    assert [b["eventDate"] for b in rec.bodies] == sorted(b["eventDate"] for b in rec.bodies)
    for body in rec.bodies:
        assert set(body) == DOCUMENTED
        assert set(body["To"]) >= {"name", "address", "city", "state", "zip"}
        assert "fields" in body["meta"] and isinstance(body["eventType"], int)
        assert "EventId" not in body and "DataId" not in body and "Email" not in body
    assert Counter(b["eventType"] for b in rec.bodies) == Counter(
        WEBHOOK_TYPE[parse_code(e["code"])] for e in truth)
    # mailId names the piece, not the event: the same for all of a recipient's events.
    per_piece: dict[str, set[str]] = {}
    for body in rec.bodies:
        per_piece.setdefault(body["mailId"], set()).add(body["To"]["name"])
    assert all(len(names) == 1 for names in per_piece.values())
    assert len(per_piece) < len(rec.bodies)


def test_duplicates_losses_and_reordering_are_switchable():
    rec = Recorder()
    _, view = deliver(rec, duplicate_rate=0.3, lost_rate=0.1, reorder=True, concurrency=1)
    counts, log = view["counts"], view["log"]
    lost = {d["event_id"] for d in log if d["lost"]}
    assert counts["lost"] == len(lost) > 0 and counts["duplicated"] > 0
    assert len(rec.bodies) == len(log) - len(lost) + counts["duplicated"]
    dates = [b["eventDate"] for b in rec.bodies]
    assert dates != sorted(dates)  # reordered


def test_a_failed_delivery_is_retried_with_its_attempt_count_until_accepted():
    rec = Recorder(fail_first=2)
    _, view = deliver(rec, retry_attempts=3, retry_delay=0.02)
    log = view["log"]
    assert all(d["attempts"] == 3 and d["last_status"] == 202 for d in log)
    assert Counter(b["retryAttempts"] for b in rec.bodies) == {0: len(log), 1: len(log),
                                                                2: len(log)}
    assert all(b["status"] == 500 for b in rec.bodies if b["retryAttempts"])
    assert "gave_up" not in view["counts"]
