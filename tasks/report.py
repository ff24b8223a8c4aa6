"""A run's artifacts: its summary, what to do first, and the problems it touched, grouped.

Made from the library's report (`mailsync.report`), so the Prefect UI shows the same rows
as `problems.csv`: one per recipient and cause, with names, the codes affected and the
action, and the per-write detail in a second table. A sync or replay run's tables cover
every row the run *touched* (including rows earlier runs planned that it retried); the
reconcile flow's cover the whole ledger or its window.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy.engine import Engine

from mailsync.config import Settings
from mailsync.report.build import build_report
from mailsync.report.columns import STATUSES
from mailsync.report.markdown import TIME_FORMAT, markdown_table
from mailsync.report.model import Report
from mailsync.report.names import ReportNames
from mailsync.report.render import problems_markdown
from mailsync.report.safe import md_text
from mailsync.sync.runner import RunSummary
from tasks.artifacts import MarkdownArtifact, RunArtifacts, TableArtifact

GROUP_FIELDS = {"group": "#", "recipient": "recipient", "problem": "problem",
                "action": "what to do", "writes": "writes", "codes": "codes affected",
                "campaign": "campaign", "location": "location", "since": "since",
                "reason": "reason", "email": "email", "step": "fix #"}
"""The grouped table's columns and their headers in the UI."""
WRITE_FIELDS = {"group": "#", "campaign": "campaign", "recipient": "recipient", "code": "code",
                "kind": "write", "status": "status", "attempts": "tries",
                "last_http_status": "HTTP", "last_attempt_at": "last try", "reason": "reason",
                "ledger_id": "ledger id"}
"""The per-write detail's columns: which write, where it stands, why."""


def _plain(value: Any) -> Any:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, datetime):
        return value.strftime(TIME_FORMAT)
    return value.item() if hasattr(value, "item") else value


def table_rows(df: pd.DataFrame, fields: dict[str, str]) -> list[dict[str, Any]]:
    """A frame's rows for a table artifact: the chosen columns under readable headers,
    times in the report's zone, to the minute."""
    return [{label: _plain(rec[c]) for c, label in fields.items()}
            for rec in df.to_dict("records")]


def run_report(engine: Engine, settings: Settings, started_at: datetime,
               locations: Sequence[str], drop_ids: Sequence[str] | None) -> Report:
    """The report over the ledger rows a run touched (updated since it started)."""
    return build_report(engine, touched_since=started_at, location_ids=list(locations),
                        drop_ids=drop_ids, settings=settings)


def _campaign_lines(summary: RunSummary, names: ReportNames) -> list[str]:
    if not summary.campaigns:
        return []
    lines = ["## Campaigns", ""]
    lines += markdown_table(
        ("campaign", "drop id", "pages", "events read", "new events", "quarantined",
         "writes planned", "page cap hit"),
        [(names.campaign(c.drop_id), c.drop_id, c.pages, c.fetched, c.new_events,
          c.quarantined, c.planned, "yes" if c.capped else "") for c in summary.campaigns],
        right={"pages", "events read", "new events", "quarantined", "writes planned"})
    return [*lines, "", "Events read counts re-reads (pages shift as events arrive); new "
                        "events are those stored for the first time.", ""]


def _location_lines(summary: RunSummary, names: ReportNames) -> list[str]:
    if not summary.locations:
        return []
    lines = ["## Writes by location", ""]
    lines += markdown_table(("location", "location id", *STATUSES, "HTTP calls", "stopped"),
                            [(names.location(loc.location_id), loc.location_id,
                              *(loc.outcomes.get(s, 0) for s in STATUSES), loc.calls,
                              loc.stopped or "") for loc in summary.locations],
                            right={*STATUSES, "HTTP calls"})
    return [*lines, ""]


def run_markdown(summary: RunSummary, report: Report) -> str:
    """The run's summary as markdown: its totals and errors, what to do first and the
    problems it touched grouped by recipient, then campaigns fetched and writes per
    location. Outside values are escaped."""
    names = report.names
    title = f"# mailsync {summary.kind} {md_text(summary.run_id)}"
    lines = [title + (" (dry run: nothing written)" if summary.dry_run else ""), ""]
    totals = summary.outcome_totals()
    lines += [f"- writes done: {totals.get('done', 0)}",
              f"- problem writes this run touched: {len(report.problems)}, for "
              f"{report.totals()['problem_recipients']} recipient(s) (table "
              f"`mailsync-{summary.kind}-problems`, every write in "
              f"`mailsync-{summary.kind}-problem-writes`)",
              f"- times are in {md_text(names.zone_name)}", ""]
    if summary.errors:
        lines += ["## Errors", ""] + [f"- {md_text(e)}" for e in summary.errors] + [""]
    if not report.problem_groups.empty:
        # The same "do this first" and grouped rows as the reconciliation report.
        lines += [*problems_markdown(report)[1:], ""]
    lines += _campaign_lines(summary, names) + _location_lines(summary, names)
    return "\n".join(lines) + "\n"


def problem_tables(report: Report, key: str, what: str) -> list[TableArtifact]:
    """The grouped problem table and the per-write detail, as table artifacts."""
    return [
        TableArtifact(f"{key}-problems", table_rows(report.problem_groups, GROUP_FIELDS),
                      f"Problems {what}, one row per recipient and cause, the fix that "
                      "unblocks most first: fix the cause, then run mailsync-replay"),
        TableArtifact(f"{key}-problem-writes", table_rows(report.problems, WRITE_FIELDS),
                      f"Every problem write {what}, under its row (#) of the problems table"),
    ]


def run_artifacts(engine: Engine, settings: Settings, summary: RunSummary,
                  started_at: datetime, locations: Sequence[str],
                  drop_ids: Sequence[str] | None) -> tuple[Report | None, RunArtifacts]:
    """A sync or replay run's summary and problem tables (none in a dry run)."""
    kind = summary.kind
    report = None if summary.dry_run else run_report(engine, settings, started_at,
                                                     locations, drop_ids)
    shown = report or Report.empty(ReportNames.from_settings(settings))
    what = f"during {kind} run {summary.run_id}"
    out = RunArtifacts(result={}, markdown=[MarkdownArtifact(
        f"mailsync-{kind}-summary", run_markdown(summary, shown),
        f"Summary of mailsync {kind} run {summary.run_id}")])
    out.tables = problem_tables(shown, f"mailsync-{kind}", what)
    return report, out
