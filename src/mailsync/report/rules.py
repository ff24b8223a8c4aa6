"""Why a ledger row is a problem, in plain words, and what support should do about it.

Pure functions over one ledger row's fields: the report (`mailsync.report.build`) applies them to
every row that is not `done`, plus the drift `verify` finds. Kinds are stable identifiers
(CSV, JSON, tests); reasons and actions are sentences for a person.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from mailsync.store.ledger import MAX_AUTO_ATTEMPTS
from mailsync.store.models import WriteStatus
from mailsync.store.reasons import QuarantineReason, Reason, describe

DRIFT_DETAIL = "removed in HighLevel after it was written"
"""The details `verify --fix` stores beside `Reason.drift` on the rows it re-opens."""

# Problem kinds, in the order the report sorts them (most actionable first).
KINDS = ("token", "no_contact", "note_refused", "tag_refused", "lookup_refused", "rejected",
         "event_gone", "failed", "drift", "never_attempted", "overdue", "lookup_retry",
         "contact_gone", "unknown", "quota")

_EMAIL = re.compile(r"([A-Za-z0-9])[A-Za-z0-9._%+\-]*@([A-Za-z0-9.\-]+\.[A-Za-z]{2,})")


def mask_email(email: str | None) -> str:
    """`ada.byrne@example.com` → `a***@example.com`; empty for no email."""
    if not email or "@" not in email:
        return ""
    local, _, domain = email.strip().partition("@")
    return f"{local[:1]}***@{domain}"


def mask_emails_in(text: str) -> str:
    """Every email address in free text masked (quarantined payloads, reasons)."""
    return _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)


class Owner(StrEnum):
    """Who acts on a problem: the report puts what a person must do first."""

    support = "support"
    """A person must fix something (then replay)."""
    mailsync = "mailsync"
    """The next scheduled runs settle it by themselves."""
    nobody = "nobody"
    """Nothing is owed any more."""


@dataclass(frozen=True)
class Verdict:
    """A row's problem: stable kind, the reason in words, the action, and who acts."""

    kind: str
    reason: str
    action: str
    owner: Owner = Owner.support


QUARANTINE_ACTIONS: dict[QuarantineReason, str] = {
    QuarantineReason.bad_event: "nothing to write; if many arrive, send Postalytics the event "
                                "id and the reason",
    QuarantineReason.unknown_code: "if Postalytics added a new event, add its label to "
                                   "mailsync's codes and resync; otherwise nothing to do",
    QuarantineReason.id_reused: "the first version was kept; send Postalytics the event id "
                                "if the new one is the right one",
    QuarantineReason.unstorable: "the database refused it even cleaned: check the database's "
                                 "log, then send us the event id",
}
"""What support does about each kind of quarantined event."""


def quarantine_verdict(code: str | None, detail: str | None) -> tuple[str, str, str]:
    """(reason code, the reason in words, the action) for a quarantined event."""
    try:
        reason = QuarantineReason(code or QuarantineReason.bad_event)
    except ValueError:  # a code written by a newer version: keep its details in words
        return str(code), detail or str(code), QUARANTINE_ACTIONS[QuarantineReason.bad_event]
    return reason.value, describe(reason, detail), QUARANTINE_ACTIONS[reason]


@dataclass(frozen=True)
class RowFacts:
    """What the rules need to know about one ledger row."""

    kind: str  # tag | untag | note
    status: str
    reason: str | None
    """The details (HighLevel's words, who the recipient is)."""
    attempts: int
    last_http_status: int | None
    created_at: datetime
    reason_code: Reason | None = None


@dataclass(frozen=True)
class LocationFacts:
    """What the latest finished run said about the row's location."""

    token_refused: str | None = None
    """The run's error when HighLevel refused the location's token, else None."""
    token_http_status: int | None = None
    last_run_finished: datetime | None = None
    """When the last run that applied (or tried to apply) this location finished."""


def server_message(reason: str | None) -> str:
    """HighLevel's own words from a stored reason like `HTTP 422 Unprocessable Entity: msg`,
    also when our wording wraps it ("... for location X: HTTP 401 Unauthorized: msg")."""
    text = (reason or "").strip()
    match = re.search(r"HTTP \d{3}[^:]*:\s*(.*)$", text, re.S)
    return (match.group(1) if match else text) or "no message"


def _token(http_status: int | None, detail: str) -> Verdict:
    code = f" (HTTP {http_status})" if http_status else ""
    # Keep HighLevel's own words, not our wrapping of them ("... for location X: HTTP 401 ...").
    return Verdict("token", f"HighLevel refused the location's token{code}: "
                            f"{server_message(detail)}",
                   "the location's token was refused: renew it, then replay")


def classify(row: RowFacts, loc: LocationFacts, now: datetime,
             pending_deadline: timedelta) -> Verdict | None:
    """The row's problem, or None when it is fine (done, or pending and simply not due yet)."""
    if row.status == WriteStatus.done:
        return None
    if row.status == WriteStatus.unknown:
        what = "note" if row.kind == "note" else "tag"
        return Verdict("unknown", f"the {what} was sent and no answer came "
                                  f"({row.reason or 'no detail'})",
                       "outcome not known yet: the next run settles it", Owner.mailsync)
    if row.status == WriteStatus.rejected:
        return _rejected(row)
    if row.status == WriteStatus.failed:
        return _failed(row)
    return _pending(row, loc, now, pending_deadline)


def _rejected(row: RowFacts) -> Verdict:
    code, detail, http = row.reason_code, row.reason or "", row.last_http_status
    what = "note" if row.kind == "note" else "tag"
    if code == Reason.token_refused or http in (401, 403):
        return _token(http, detail)
    if code in (Reason.no_contact, Reason.contact_gone):
        return Verdict("no_contact", describe(code, server_message(detail)),
                       "no HighLevel contact: create it or fill the contact-id field, "
                       "then replay")
    if code in (Reason.lookup_refused, Reason.create_refused):
        return Verdict("lookup_refused", describe(code, server_message(detail)),
                       "HighLevel refused to look up or create the contact: fix, then replay")
    if code == Reason.event_gone:
        return Verdict("event_gone", describe(code, detail), "nothing to send any more; "
                       "no action", Owner.nobody)
    msg = server_message(detail) if detail else f"HTTP {http}"
    if http == 422:
        return Verdict(f"{what}_refused", f"HighLevel refused the {what}: {msg}",
                       f"HighLevel refused the {what}: {msg}; fix and replay")
    return Verdict("rejected", f"HighLevel refused the {what}: {msg}",
                   "fix the cause HighLevel names, then replay")


def _failed(row: RowFacts) -> Verdict:
    if row.reason_code == Reason.tag_missing:
        return Verdict("failed", describe(Reason.tag_missing, None),
                       "none yet: the next run adds it again", Owner.mailsync)
    if row.attempts >= MAX_AUTO_ATTEMPTS:
        return Verdict("failed", f"gave up after {row.attempts} tries: {row.reason}",
                       "HighLevel kept failing: check its status page, then replay")
    return Verdict("failed", f"HighLevel did not answer in time: {row.reason}",
                   "none yet: the next run tries again", Owner.mailsync)


def _pending(row: RowFacts, loc: LocationFacts, now: datetime,
             pending_deadline: timedelta) -> Verdict | None:
    code, http = row.reason_code, row.last_http_status
    if code == Reason.drift:
        return Verdict("drift", describe(code, row.reason), "re-opened by verify: the next sync "
                       "or a replay writes it again", Owner.mailsync)
    if code == Reason.daily_quota:
        return Verdict("quota", "HighLevel's daily request budget for the location was spent",
                       "waits for tomorrow's quota; nothing to do", Owner.mailsync)
    if code == Reason.token_refused or http in (401, 403):
        return _token(http, row.reason or "")
    if loc.token_refused and (loc.last_run_finished is None
                              or row.created_at <= loc.last_run_finished):
        return _token(loc.token_http_status, loc.token_refused)
    if code == Reason.lookup_unanswered:
        return Verdict("lookup_retry", describe(code, row.reason),
                       "none yet: the next run looks again", Owner.mailsync)
    if code == Reason.contact_gone:
        return Verdict("contact_gone", describe(code, server_message(row.reason)),
                       "none yet: the next run looks the recipient up again and writes to "
                       "the contact HighLevel has now", Owner.mailsync)
    if now - row.created_at > pending_deadline:
        hours = pending_deadline.total_seconds() / 3600
        return Verdict("overdue", f"still pending more than {hours:g} h after it was planned",
                       "check that the scheduled sync is running, then replay")
    if row.attempts == 0 and loc.last_run_finished and row.created_at < loc.last_run_finished:
        return Verdict("never_attempted", "planned, but no run has attempted it yet",
                       "run `mailsync replay` (and check the sync's errors)")
    return None  # planned moments ago: the run in progress will send it
