"""A store built by hand for the report tests: two campaigns, a US journey, quarantine, runs,
and one ledger row per problem case (`CASES`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailsync.codes import EventCode, tag_for
from mailsync.report.rules import DRIFT_DETAIL
from mailsync.store.engine import get_engine
from mailsync.store.models import Campaign, MailEvent, QuarantinedEvent, SyncRun, WriteIntent
from mailsync.store.reasons import Reason

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
LOC_A, LOC_B = "locAAAAAAAAAAAAAAAAA", "locBBBBBBBBBBBBBBBBB"
US, CA = "40211", "40245"
# The journey of the US campaign's 20 pieces: how many recipients reached each code.
US_REACH = {EventCode.MailPieceCreated: 20, EventCode.Mailed: 18, EventCode.InTransit: 15,
            EventCode.InLocalArea: 12, EventCode.ProcessedForDelivery: 10,
            EventCode.ReturnedToSender: 1, EventCode.pURLOpened: 4}

# intent label → (ledger fields, the problem kind the report must give; None: not a problem)
CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    "done": ({"status": "done", "attempts": 1, "last_http_status": 201}, None),
    "no_contact": ({"status": "rejected", "attempts": 1, "contact_id": None,
                    "reason_code": Reason.no_contact,
                    "reason": "Ada Byrne (Postalytics id 88001)"},
                   "no_contact"),
    "gone": ({"status": "rejected", "attempts": 1, "last_http_status": 404,
              "reason_code": Reason.contact_gone,
              "reason": "HTTP 404 Not Found: Contact not found"}, "no_contact"),
    "gone_400": ({"status": "pending", "attempts": 1, "last_http_status": 400,
                  "reason_code": Reason.contact_gone,
                  "reason": "HTTP 400 Bad Request: Contact not found"}, "contact_gone"),
    "note_422": ({"kind": "note", "status": "rejected", "attempts": 1, "last_http_status": 422,
                  "reason_code": Reason.refused,
                  "reason": "HTTP 422 Unprocessable Entity: body is too long"}, "note_refused"),
    "token_403": ({"status": "rejected", "attempts": 1, "last_http_status": 403,
                   "reason_code": Reason.token_refused,
                   "reason": "HTTP 403 Forbidden: The token does not have access to this "
                             "location."}, "token"),
    "failed": ({"status": "failed", "attempts": 3, "last_http_status": 503,
                "reason_code": Reason.unanswered,
                "reason": "gave up after 3 attempts: HTTP 503"}, "failed"),
    "unknown": ({"kind": "note", "status": "unknown", "attempts": 1,
                 "reason_code": Reason.sent_unanswered, "reason": "ReadTimeout"}, "unknown"),
    "quota": ({"status": "pending", "reason_code": Reason.daily_quota}, "quota"),
    "overdue": ({"status": "pending", "created_at": NOW - timedelta(hours=30)}, "overdue"),
    "never": ({"status": "pending", "created_at": NOW - timedelta(hours=3)}, "never_attempted"),
    "fresh": ({"status": "pending", "created_at": NOW - timedelta(minutes=1)}, None),
    "lookup": ({"status": "pending", "reason_code": Reason.lookup_unanswered,
                "reason": "gave up after 4 attempts"}, "lookup_retry"),
    "drift": ({"status": "pending", "attempts": 1, "reason_code": Reason.drift,
               "reason": DRIFT_DETAIL}, "drift"),
}


def make_store(url: str) -> Engine:
    """A store with two campaigns, a US journey, quarantine, runs and one row per case."""
    engine = get_engine(url)
    t0 = NOW - timedelta(days=4)
    with Session(engine) as s:
        s.add(Campaign(drop_id=US, name="Fall US Postcard", country="US", location_id=LOC_A))
        s.add(Campaign(drop_id=CA, name="Fall CA Postcard", country="CA", location_id=LOC_B))
        for i in range(20):
            for j, (code, n) in enumerate(US_REACH.items()):
                if i < n:
                    s.add(MailEvent(key=f"e:{US}:{i}-{code}", drop_id=US,
                                    recipient_key=f"d:{88000 + i}", code=code.value,
                                    event_at=t0 + timedelta(hours=j), first_name="Ada",
                                    last_name=f"Byrne{i}", email=f"ada.byrne.{i}@example.com",
                                    fetched_at=t0, run_id="run-1"))
        s.add(MailEvent(key=f"e:{CA}:0", drop_id=CA, recipient_key="d:99000",
                        code="MailPieceCreated", event_at=t0, first_name="Ken",
                        email="ken@example.ca", fetched_at=t0, run_id="run-1"))
        s.add(QuarantinedEvent(fingerprint="q:1", drop_id=US, reason="missing event date",
                               payload='{"Email": "grace@example.com", "Event": "Mailed"}',
                               first_seen=t0, run_id="run-1"))
        s.add(SyncRun(id="run-1", kind="sync", started_at=t0, finished_at=NOW - timedelta(hours=1),
                      status="completed", counts=json.dumps({
                          "campaigns": [{"drop_id": US, "fetched": 250},
                                        {"drop_id": CA, "fetched": 3}],
                          "locations": [{"location_id": LOC_A}, {"location_id": LOC_B}],
                          "errors": []})))
        for i, (label, (fields, _)) in enumerate(CASES.items()):
            kind = fields.get("kind", "tag")
            row = {"intent_key": f"{kind}|{label}", "kind": kind, "location_id": LOC_A,
                   "drop_id": US, "recipient_key": f"d:{88000 + i}",
                   "event_key": f"e:{US}:{i}-Mailed", "code": "Mailed",
                   "contact_id": f"contact{i:02d}", "tag": tag_for(EventCode.Mailed),
                   "marker": f"ms-{i:016d}", "run_id": "run-1",
                   "created_at": NOW - timedelta(hours=2)}
            row.update(fields)
            if row.get("attempts"):
                row["first_attempt_at"] = row["last_attempt_at"] = NOW - timedelta(hours=2)
            s.add(WriteIntent(**row))
        s.add(WriteIntent(intent_key="tag|ca", kind="tag", location_id=LOC_B, drop_id=CA,
                          recipient_key="d:99000", code="MailPieceCreated", status="done",
                          contact_id="contactCA", created_at=NOW - timedelta(hours=2),
                          run_id="run-1"))
        s.commit()
    return engine


def problems_by_label(report: Any) -> dict[str, str]:
    labels = {f"d:{88000 + i}": label for i, label in enumerate(CASES)}
    return {labels[r["recipient_key"]]: r["problem"] for r in report.problem_records()}
