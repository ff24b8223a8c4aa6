"""The report's tables: their columns, and the order write statuses are shown in."""

from __future__ import annotations

from mailsync.store.models import WriteStatus

STATUS_ORDER: tuple[WriteStatus, ...] = (
    WriteStatus.done, WriteStatus.rejected, WriteStatus.failed, WriteStatus.unknown,
    WriteStatus.pending)
"""Every status, as tables show them: what landed, what went wrong, what is still open."""
STATUSES: list[str] = [s.value for s in STATUS_ORDER]
"""`STATUS_ORDER` as plain column names (DataFrames, CSV and JSON keys)."""

SUMMARY_COLUMNS = ["campaign", "drop_id", "location", "location_id", "configured", "events_seen",
                   "events_new", "quarantined", "planned", *STATUSES, "problems"]
"""Per campaign and location. `events_seen`: distinct events known for the campaign (stored
or quarantined), however often they were read; `events_new`: first stored in the window."""
RUN_COLUMNS = ["run_id", "kind", "started_at", "finished_at", "status", "events_read",
               "events_new", "quarantined", "planned", *STATUSES, "errors"]
"""Per run: `events_read` counts every event a run read, re-reads included; `events_new`
those it stored for the first time."""
STEP_COLUMNS = ["step", "owner", "problem", "action", "location", "location_id", "campaigns",
                "recipients", "writes"]
"""What to do, one row per fix, with the recipients and writes it unblocks."""
GROUP_COLUMNS = ["group", "step", "problem", "owner", "campaign", "drop_id", "location",
                 "location_id", "recipient", "email", "contact_id", "codes", "writes", "tags",
                 "notes", "statuses", "since", "last_attempt_at", "last_http_status", "reason",
                 "action", "recipient_key"]
"""One row per campaign, recipient and problem (`problems.csv`)."""
PROBLEM_COLUMNS = ["group", "problem", "owner", "campaign", "drop_id", "location", "location_id",
                   "recipient", "email", "contact_id", "code", "kind", "status", "attempts",
                   "last_http_status", "reason", "action", "planned_at", "first_attempt_at",
                   "last_attempt_at", "ledger_id", "recipient_key", "source"]
"""One row per problem write (`problem_writes.csv`), under its group's number."""
QUARANTINE_COLUMNS = ["campaign", "drop_id", "first_seen", "problem", "reason", "action",
                      "event", "event_id", "event_date", "recipient", "email", "fingerprint",
                      "run_id"]
"""One row per quarantined event: what came, why it was kept aside, what to do; personal
fields (names, addresses, phones) never shown, emails masked."""
FUNNEL_COLUMNS = ["drop_id", "campaign", "country", "stage", "code", "label", "recipients",
                  "reported", "pieces", "share"]
"""How far the pieces got: for journey codes `recipients` is cumulative (reached at least
this step: the code or any later one), `reported` those with the code's own event."""
UNSTORED_COLUMNS = ["drop_id", "campaign", "event_key", "code", "event_at", "recipient",
                    "email"]
EVENT_COLUMNS = ["drop_id", "recipient_key", "code", "event_at", "fetched_at", "run_id"]
