"""The report's tables: their columns, and the order write statuses are shown in."""

from __future__ import annotations

from mailsync.store.models import WriteStatus

STATUS_ORDER: tuple[WriteStatus, ...] = (
    WriteStatus.done, WriteStatus.rejected, WriteStatus.failed, WriteStatus.unknown,
    WriteStatus.pending)
"""Every status, as tables show them: what landed, what went wrong, what is still open."""
STATUSES: list[str] = [s.value for s in STATUS_ORDER]
"""`STATUS_ORDER` as plain column names (DataFrames, CSV and JSON keys)."""

SUMMARY_COLUMNS = ["drop_id", "campaign", "location_id", "events_fetched", "events_new",
                   "quarantined", "planned", *STATUSES, "problems"]
PROBLEM_COLUMNS = ["ledger_id", "drop_id", "campaign", "location_id", "recipient_key", "recipient",
                   "email", "contact_id", "code", "kind", "status", "attempts",
                   "last_http_status", "problem", "reason", "action", "first_attempt_at",
                   "last_attempt_at", "created_at", "source"]
QUARANTINE_COLUMNS = ["drop_id", "campaign", "fingerprint", "reason", "first_seen", "run_id",
                      "payload"]
FUNNEL_COLUMNS = ["drop_id", "campaign", "country", "stage", "code", "label", "recipients",
                  "pieces", "share"]
UNSTORED_COLUMNS = ["drop_id", "campaign", "event_key", "code", "event_at", "recipient",
                    "email"]
EVENT_COLUMNS = ["drop_id", "recipient_key", "code", "event_at", "fetched_at", "run_id"]
