"""The report's reading of the store: what is in scope (a run, a window, campaigns) and the
queries over the ledger, events, quarantine and runs. Read-only; no pandas here."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, col, func, select

from mailsync.redact import redact
from mailsync.report.rules import LocationFacts
from mailsync.store.models import Campaign, MailEvent, QuarantinedEvent, SyncRun, WriteIntent
from mailsync.store.runs import ErrorKind, Scope

_CHUNK = 500
"""Keys per IN (...) query: well under SQLite's and PostgreSQL's parameter limits."""

RunCounts = tuple[SyncRun, dict[str, Any]]
"""A run and the counts it stored (campaigns fetched, locations applied, errors)."""


def utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime (a naive one is taken to be UTC already)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass
class ReportScope:
    """What a report covers: one run's rows, a planned-at window, some campaigns (or all)."""

    run: SyncRun | None
    since: datetime | None
    until: datetime | None
    drop_ids: list[str] | None
    touched_since: datetime | None = None
    """Only ledger rows updated since then (a run's artifacts: every row it touched,
    including rows earlier runs planned and this one retried)."""
    location_ids: list[str] | None = None

    def covers(self, when: datetime | None) -> bool:
        """Whether a moment is inside the window (an unknown moment only when unbounded)."""
        if when is None:
            return self.since is None and self.until is None
        return ((self.since is None or when >= self.since)
                and (self.until is None or when <= self.until))


def campaigns(s: Session) -> dict[str, Campaign]:
    """Every stored campaign by drop id."""
    return {c.drop_id: c for c in s.exec(select(Campaign)).all()}


def ledger_rows(s: Session, scope: ReportScope) -> list[WriteIntent]:
    """The ledger rows in scope: a sync's planned rows, or what a replay attempted."""
    q = select(WriteIntent)
    if scope.drop_ids:
        q = q.where(col(WriteIntent.drop_id).in_(scope.drop_ids))
    if scope.location_ids:
        q = q.where(col(WriteIntent.location_id).in_(scope.location_ids))
    if scope.touched_since is not None:
        q = q.where(col(WriteIntent.updated_at) >= scope.touched_since)
    run = scope.run
    if run is not None and run.kind == "sync":
        q = q.where(WriteIntent.run_id == run.id)
    elif run is not None:  # a replay plans nothing: take what it attempted
        q = q.where(col(WriteIntent.last_attempt_at) >= run.started_at)
        if run.finished_at is not None:
            q = q.where(col(WriteIntent.last_attempt_at) <= run.finished_at)
    if scope.since is not None:
        q = q.where(col(WriteIntent.created_at) >= scope.since)
    if scope.until is not None:
        q = q.where(col(WriteIntent.created_at) <= scope.until)
    return list(s.exec(q.order_by(col(WriteIntent.id))).all())


def runs_with_counts(s: Session) -> list[RunCounts]:
    """Every run, oldest first, with its stored counts (empty when unreadable)."""
    out = []
    for run in s.exec(select(SyncRun).order_by(col(SyncRun.started_at))).all():
        try:
            counts = json.loads(run.counts) if run.counts else {}
        except ValueError:
            counts = {}
        out.append((run, counts if isinstance(counts, dict) else {}))
    return out


def _location_error(err: Any) -> tuple[str, str | None, int | None] | None:
    """(location id, the token refusal in words or None, its HTTP status) from one stored
    run error; None when the error is not a location's."""
    if isinstance(err, dict):  # a RunError, as the runner stores it
        if err.get("scope") != Scope.location or not err.get("target"):
            return None
        status = err.get("http_status")
        refused = err.get("kind") == ErrorKind.credentials
        return (str(err["target"]), redact(str(err.get("message") or "")) if refused else None,
                status if status in (401, 403) else None)
    m = re.match(r"location (\S+): (.*)$", str(err), re.S)  # runs stored before RunError
    if not m:
        return None
    text = redact(m.group(2))
    refused = "token" in text.lower() or re.search(r"HTTP 40[13]\b", text)
    status_text = re.search(r"HTTP (40[13])\b", text)
    return (m.group(1), text if refused else None,
            int(status_text.group(1)) if status_text else None)


def location_facts(runs: Iterable[RunCounts]) -> dict[str, LocationFacts]:
    """Per location, what the latest finished run that applied it said (token refused?)."""
    facts: dict[str, LocationFacts] = {}
    for run, counts in runs:  # oldest first: later runs overwrite
        if run.finished_at is None:
            continue
        for loc in counts.get("locations") or []:
            if isinstance(loc, dict) and loc.get("location_id"):
                facts[str(loc["location_id"])] = LocationFacts(last_run_finished=run.finished_at)
        for err in counts.get("errors") or []:
            found = _location_error(err)
            if found is not None:
                location_id, refused, status = found
                facts[location_id] = LocationFacts(token_refused=refused,
                                                   token_http_status=status,
                                                   last_run_finished=run.finished_at)
    return facts


def quarantined_by_drop(s: Session, scope: ReportScope) -> dict[str, int]:
    """Distinct events quarantined per campaign up to the window's end (for events seen)."""
    q = select(QuarantinedEvent.drop_id, func.count()).group_by(QuarantinedEvent.drop_id)
    if scope.drop_ids:
        q = q.where(col(QuarantinedEvent.drop_id).in_(scope.drop_ids))
    if scope.until is not None:
        q = q.where(col(QuarantinedEvent.first_seen) <= scope.until)
    return {str(d): int(n) for d, n in s.exec(q).all()}


def recipients(s: Session, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], MailEvent]:
    """The newest stored event of each (drop_id, recipient_key): who the recipient is."""
    out: dict[tuple[str, str], MailEvent] = {}
    keys = sorted({k for _, k in pairs})
    for start in range(0, len(keys), _CHUNK):
        q = select(MailEvent).where(col(MailEvent.recipient_key).in_(keys[start:start + _CHUNK]))
        for e in s.exec(q.order_by(col(MailEvent.event_at))).all():
            if (e.drop_id, e.recipient_key) in pairs:
                prev = out.get((e.drop_id, e.recipient_key))
                if prev is None or e.email or e.first_name or not (prev.email or prev.first_name):
                    out[(e.drop_id, e.recipient_key)] = e
    return out


def event_rows(s: Session, scope: ReportScope) -> list[tuple[Any, ...]]:
    """(drop_id, recipient_key, code, event_at, fetched_at, run_id) of the campaigns' events
    up to the window's end: the funnel is cumulative, so no lower bound."""
    q = select(MailEvent.drop_id, MailEvent.recipient_key, MailEvent.code, MailEvent.event_at,
               MailEvent.fetched_at, MailEvent.run_id)
    if scope.drop_ids:
        q = q.where(col(MailEvent.drop_id).in_(scope.drop_ids))
    if scope.until is not None:
        q = q.where(col(MailEvent.event_at) <= scope.until)
    return [tuple(row) for row in s.exec(q).all()]


def quarantined(s: Session, scope: ReportScope) -> list[QuarantinedEvent]:
    """Events kept aside in scope (by the run that saw them, or first seen in the window)."""
    q = select(QuarantinedEvent)
    if scope.drop_ids:
        q = q.where(col(QuarantinedEvent.drop_id).in_(scope.drop_ids))
    if scope.run is not None:
        q = q.where(QuarantinedEvent.run_id == scope.run.id)
    return [e for e in s.exec(q.order_by(col(QuarantinedEvent.first_seen))).all()
            if scope.covers(e.first_seen)]
