"""Reconciliation reports: what was fetched and written, and every write that went wrong.

`build_report` composes the parts: it reads the store (`load`), gives every ledger row in
scope its verdict (`rules`), and makes the tables (`frames`) of the `Report` (`model`) that
every format is rendered from (`render`, `html`, and the Prefect artifacts). The live checks
that need HighLevel or Postalytics (`verify`, events never stored) are in
`mailsync.report.verify`; their findings can be passed in here.

Filters: `run_id` selects what one run planned (a sync) or attempted (a replay); `since` /
`until` select writes planned, events stored and events quarantined in that window; the
funnel covers every stored event of the selected campaigns up to `until` (how far the
pieces got is cumulative). Emails are masked and no token is ever read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailsync.report import frames, load
from mailsync.report.frames import ProblemRow
from mailsync.report.model import DriftFinding, Report
from mailsync.report.render import write_report_files
from mailsync.report.rules import LocationFacts, RowFacts, Verdict, classify
from mailsync.store.models import SyncRun, WriteIntent, WriteStatus
from mailsync.store.reasons import Reason

DRIFT_ACTION = "run `mailsync verify --fix`, then replay to write it again"
"""What to do about a done write verify found missing (not re-opened yet)."""


def verdict(r: WriteIntent, facts: dict[str, LocationFacts], now: datetime,
            deadline: timedelta, drifted: dict[int, DriftFinding]) -> Verdict | None:
    """A ledger row's problem: drift verify found on a done row, else what the rules say."""
    if r.id is not None and r.id in drifted and r.status == WriteStatus.done:
        return Verdict("drift", drifted[r.id].detail, DRIFT_ACTION)
    return classify(RowFacts(kind=r.kind, status=r.status, reason=r.reason,
                             attempts=r.attempts, last_http_status=r.last_http_status,
                             created_at=r.created_at,
                             reason_code=Reason(r.reason_code) if r.reason_code else None),
                    facts.get(r.location_id, LocationFacts()), now, deadline)


def build_report(engine: Engine, *, run_id: str | None = None, since: datetime | None = None,
                 until: datetime | None = None, drop_ids: Sequence[str] | None = None,
                 pending_deadline: timedelta = timedelta(hours=24),
                 drift: Iterable[DriftFinding] = (),
                 unstored: Iterable[dict[str, Any]] = (),
                 now: datetime | None = None) -> Report:
    """The report for a run or a window, per campaign and location, with its problem writes.

    `drift` (from `verify.verify`) and `unstored` (from `verify.unstored_events`) add what
    only HighLevel and Postalytics can tell; `now` fixes the clock for the deadline.
    """
    now = load.utc(now) or datetime.now(UTC)
    drops = [str(d) for d in drop_ids] if drop_ids else None
    drifted = {d.ledger_id: d for d in drift}
    with Session(engine) as s:
        run = s.get(SyncRun, run_id) if run_id else None
        if run_id and run is None:
            raise LookupError(f"no run with id {run_id!r} in the store")
        scope = load.ReportScope(run, load.utc(since), load.utc(until), drops)
        campaigns = load.campaigns(s)
        rows = load.ledger_rows(s, scope)
        runs = load.runs_with_counts(s)
        facts = load.location_facts(runs)
        problem_rows: list[ProblemRow] = [
            (r, v) for r in rows
            if (v := verdict(r, facts, now, pending_deadline, drifted)) is not None]
        who = load.recipients(s, {(r.drop_id, r.recipient_key) for r, _ in problem_rows})
        events = frames.events_frame(load.event_rows(s, scope))
        kept_aside = load.quarantined(s, scope)
    names = {d: c.name or "" for d, c in campaigns.items()}
    problems = frames.problems_frame(problem_rows, who, names)
    quarantined = frames.quarantine_frame(kept_aside, names)
    summary = frames.summary_frame(rows, problems, events, quarantined,
                                   load.fetched_by_drop(runs, scope), scope, campaigns)
    filters = {"run_id": run_id, "since": scope.since, "until": scope.until,
               "drop_ids": drops, "pending_deadline": pending_deadline}
    return Report(summary=summary, problems=problems, quarantined=quarantined,
                  funnel=frames.funnel(events, campaigns),
                  unstored=frames.unstored_frame(unstored, names),
                  filters={k: v for k, v in filters.items() if v is not None},
                  generated_at=now)


def write_files(engine: Engine, out_dir: Path, **filters: Any) -> list[Path]:
    """Build the report (filters as for `build_report`) and write CSV, JSON and HTML files."""
    return write_report_files(build_report(engine, **filters), Path(out_dir))
