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

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailsync.config import Settings
from mailsync.report import frames, load
from mailsync.report.model import DriftFinding, Report
from mailsync.report.names import ReportNames
from mailsync.report.problems import ProblemRow, problem_tables
from mailsync.report.quarantine import quarantine_frame
from mailsync.report.render import write_report_files
from mailsync.report.rules import LocationFacts, Owner, RowFacts, Verdict, classify
from mailsync.report.webhooks import channels_frame
from mailsync.store.models import SyncRun, WriteIntent, WriteStatus
from mailsync.store.reasons import Reason

DRIFT_ACTION = "run `mailsync verify --fix`, then replay to write it again"
"""What to do about a done write verify found missing (not re-opened yet)."""


def verdict(r: WriteIntent, facts: dict[str, LocationFacts], now: datetime,
            deadline: timedelta, drifted: dict[int, DriftFinding]) -> Verdict | None:
    """A ledger row's problem: drift verify found on a done row, else what the rules say."""
    if r.id is not None and r.id in drifted and r.status == WriteStatus.done:
        return Verdict("drift", drifted[r.id].detail, DRIFT_ACTION, Owner.support)
    return classify(RowFacts(kind=r.kind, status=r.status, reason=r.reason,
                             attempts=r.attempts, last_http_status=r.last_http_status,
                             created_at=r.created_at,
                             reason_code=Reason(r.reason_code) if r.reason_code else None),
                    facts.get(r.location_id, LocationFacts()), now, deadline)


def report_names(settings: Settings | None,
                 postalytics_names: Mapping[str, str] | None = None) -> ReportNames:
    """The names and zone a report shows: the config's, or the store's alone without one."""
    return (ReportNames.from_settings(settings, postalytics_names) if settings is not None
            else ReportNames(campaigns=dict(postalytics_names or {})))


def build_report(engine: Engine, *, run_id: str | None = None, since: datetime | None = None,
                 until: datetime | None = None, drop_ids: Sequence[str] | None = None,
                 pending_deadline: timedelta = timedelta(hours=24),
                 drift: Iterable[DriftFinding] = (),
                 unstored: Iterable[dict[str, Any]] = (),
                 now: datetime | None = None, settings: Settings | None = None,
                 postalytics_names: Mapping[str, str] | None = None,
                 touched_since: datetime | None = None,
                 location_ids: Sequence[str] | None = None) -> Report:
    """The report for a run or a window, per campaign and location, with its problem writes.

    `drift` (from `verify.verify`) and `unstored` (from `verify.unstored_events`) add what
    only HighLevel and Postalytics can tell; `now` fixes the clock for the deadline.
    `settings` gives the location and campaign names, which campaigns are still configured
    and the zone times are shown in (without it: the store's names, UTC);
    `postalytics_names` names campaigns the config leaves unnamed. `touched_since` and
    `location_ids` narrow the problem writes to those a run touched (its artifacts).
    """
    now = load.utc(now) or datetime.now(UTC)
    drops = [str(d) for d in drop_ids] if drop_ids else None
    drifted = {d.ledger_id: d for d in drift}
    with Session(engine) as s:
        run = s.get(SyncRun, run_id) if run_id else None
        if run_id and run is None:
            raise LookupError(f"no run with id {run_id!r} in the store")
        scope = load.ReportScope(run, load.utc(since), load.utc(until), drops,
                                 load.utc(touched_since),
                                 list(location_ids) if location_ids else None)
        campaigns = load.campaigns(s)
        names = report_names(settings, postalytics_names).with_store(campaigns)
        rows = load.ledger_rows(s, scope)
        runs = load.runs_with_counts(s)
        facts = load.location_facts(runs)
        problem_rows: list[ProblemRow] = [
            (r, v) for r in rows
            if (v := verdict(r, facts, now, pending_deadline, drifted)) is not None]
        who = load.recipients(s, {(r.drop_id, r.recipient_key) for r, _ in problem_rows})
        events = frames.events_frame(load.event_rows(s, scope))
        quarantined = quarantine_frame(load.quarantined(s, scope), names)
        seen_quarantined = load.quarantined_by_drop(s, scope)
    tables = problem_tables(problem_rows, who, names)
    summary = frames.summary_frame(rows, tables.writes, events, quarantined,
                                   seen_quarantined, scope, campaigns, names)
    filters = {"run_id": run_id, "since": scope.since, "until": scope.until,
               "drop_ids": drops, "pending_deadline": pending_deadline}
    local = partial(frames.localise, names=names)
    return Report(summary=summary, problems=local(tables.writes),
                  problem_groups=local(tables.groups), steps=tables.steps,
                  quarantined=local(quarantined), funnel=frames.funnel(events, campaigns, names),
                  runs=local(frames.runs_frame(runs, scope)),
                  unstored=local(frames.unstored_frame(unstored, names)),
                  webhooks=channels_frame(engine, scope, names),
                  filters={k: v for k, v in filters.items() if v is not None},
                  generated_at=names.local(now) or now, names=names)


def write_files(engine: Engine, out_dir: Path, **filters: Any) -> list[Path]:
    """Build the report (filters as for `build_report`) and write its files (see
    `render.write_report_files`)."""
    return write_report_files(build_report(engine, **filters), Path(out_dir))
