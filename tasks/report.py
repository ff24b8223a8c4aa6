"""A sync or replay run's artifacts: its summary text and the problem rows it touched.

The reconcile flow uses `mailsync.report.build` (per campaign, with a verdict and an action per
problem). A run's tables here are scoped differently: every row the run *touched*, including
rows planned by earlier runs that it retried, which the report's run window does not cover.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailsync.report.columns import STATUSES
from mailsync.report.markdown import markdown_table
from mailsync.store.models import WriteIntent, WriteStatus
from mailsync.sync.runner import RunSummary

REJECTED = (WriteStatus.rejected,)
MISSED = (WriteStatus.failed, WriteStatus.unknown)
"""Rows that were tried and whose outcome is not `done`; pending rows with a reason join them
(a lookup HighLevel did not answer, or the daily quota)."""

_COLUMNS = ("id", "location_id", "drop_id", "recipient_key", "kind", "code", "tag",
            "contact_id", "status", "last_http_status", "attempts", "reason", "updated_at")


def _row(w: WriteIntent) -> dict[str, Any]:
    # Never the note body: it repeats the recipient's data and adds nothing to a triage table.
    out = {c: getattr(w, c) for c in _COLUMNS}
    out["updated_at"] = w.updated_at.isoformat(timespec="seconds") if w.updated_at else None
    return out


def problem_rows(engine: Engine, *, since: datetime | None = None,
                 locations: Sequence[str] | None = None,
                 drop_ids: Sequence[str] | None = None) -> tuple[list[dict], list[dict]]:
    """(rejected, missed) ledger rows, optionally only those updated since `since`."""
    with Session(engine) as s:
        q = select(WriteIntent).where(
            col(WriteIntent.status).in_([*REJECTED, *MISSED])
            | ((WriteIntent.status == WriteStatus.pending)
               & col(WriteIntent.reason).is_not(None)))
        if since is not None:
            q = q.where(WriteIntent.updated_at >= since)
        if locations:
            q = q.where(col(WriteIntent.location_id).in_(list(locations)))
        if drop_ids:
            q = q.where(col(WriteIntent.drop_id).in_(list(drop_ids)))
        rows = [_row(w) for w in s.exec(q.order_by(col(WriteIntent.id))).all()]
    rejected = [r for r in rows if r["status"] == WriteStatus.rejected]
    missed = [r for r in rows if r["status"] != WriteStatus.rejected]
    return rejected, missed


def run_markdown(summary: RunSummary, rejected: int, missed: int,
                 flow_run_name: str | None = None) -> str:
    """The run's summary as markdown: campaigns fetched, writes applied, problems."""
    title = f"# mailsync {summary.kind} `{summary.run_id}`"
    lines = [title + (" (dry run: nothing written)" if summary.dry_run else ""), ""]
    if flow_run_name:
        lines += [f"Flow run: `{flow_run_name}`", ""]
    if summary.campaigns:
        lines += ["## Campaigns", ""]
        lines += markdown_table(("campaign", "pages", "fetched", "new events", "quarantined",
                                 "writes planned", "page cap hit"),
                                [(c.drop_id, c.pages, c.fetched, c.new_events, c.quarantined,
                                  c.planned, "yes" if c.capped else "")
                                 for c in summary.campaigns])
        lines.append("")
    if summary.locations:
        lines += ["## Writes by location", ""]
        lines += markdown_table(("location", *STATUSES, "HTTP calls", "stopped"),
                                [(loc.location_id, *(loc.outcomes.get(s, 0) for s in STATUSES),
                                  loc.calls, loc.stopped or "") for loc in summary.locations])
        lines.append("")
    totals = summary.outcome_totals()
    lines += ["## Totals", "",
              f"- writes done: {totals.get('done', 0)}",
              f"- rejected this run: {rejected} (table `mailsync-{summary.kind}-rejected-writes`)",
              f"- missed this run (failed, unknown, or left pending with a reason): {missed} "
              f"(table `mailsync-{summary.kind}-missed-writes`)", ""]
    if summary.errors:
        lines += ["## Errors", ""] + [f"- {e}" for e in summary.errors] + [""]
    return "\n".join(lines)

