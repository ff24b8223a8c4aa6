"""`mailsync sync` and `mailsync replay`: a run with live progress, then its summary tables."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from mailsync.cli.options import (
    CampaignOpt,
    ConfigOpt,
    console,
    err_console,
    friendly_errors,
    open_context,
)
from mailsync.config import ConfigError
from mailsync.report.columns import STATUS_ORDER, STATUSES
from mailsync.store import ledger
from mailsync.store.ledger import SYNC_STATUSES
from mailsync.store.models import WriteStatus
from mailsync.sync.context import SyncContext
from mailsync.sync.fetch import CampaignResult
from mailsync.sync.runner import RunSummary, apply_options, run_replay, run_sync

REPLAY_DEFAULT = ",".join(s.value for s in STATUS_ORDER if s != WriteStatus.done)
"""Every status but done: what `mailsync replay` re-sends unless told otherwise."""


def open_count(ctx: SyncContext, location_id: str, job: str, **selection: Any) -> int:
    """How many ledger rows the apply of a location will look at (the progress bar's total):
    the same selection the run applies, from `store.ledger`."""
    opts = apply_options(ctx, statuses=selection.get("statuses") or SYNC_STATUSES,
                         drop_ids=selection.get("drop_ids"), since=selection.get("since"),
                         reresolve=job == "replay")
    return ledger.count_open(ctx.engine, opts.selection(location_id))


class _RunProgress:
    """Progress bars for one run: pages per campaign, writes per location."""

    def __init__(self, bar: Progress, ctx: SyncContext, job: str,
                 selection: dict[str, Any]) -> None:
        self.bar, self.ctx, self.job, self.selection = bar, ctx, job, selection
        self.pages: dict[str, TaskID] = {}
        self.writes: dict[str, TaskID] = {}

    def on_page(self, res: CampaignResult) -> None:
        if res.drop_id not in self.pages:
            self.pages[res.drop_id] = self.bar.add_task(f"fetch campaign {res.drop_id}",
                                                        total=None)
        self.bar.update(self.pages[res.drop_id], completed=res.pages,
                        description=f"fetch campaign {res.drop_id}: {res.new_events} new events")

    def on_write(self, location_id: str, n: int) -> None:
        if location_id not in self.writes:
            total = open_count(self.ctx, location_id, self.job, **self.selection)
            self.writes[location_id] = self.bar.add_task(f"apply location {location_id}",
                                                         total=total)
        self.bar.advance(self.writes[location_id], n)


def run_with_progress(ctx: SyncContext, job: str, **kwargs: Any) -> RunSummary:
    """Run a sync or replay with live progress: pages per campaign, writes per location."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        shown = _RunProgress(bar, ctx, job, kwargs)
        if job == "sync":
            return asyncio.run(run_sync(ctx, on_page=shown.on_page, progress=shown.on_write,
                                        **kwargs))
        return asyncio.run(run_replay(ctx, progress=shown.on_write, **kwargs))


def _campaigns_table(summary: RunSummary) -> Table:
    table = Table(title=f"{summary.kind} {summary.run_id}: campaigns"
                  + (" (dry run: nothing written)" if summary.dry_run else ""))
    for c in ("campaign", "pages", "events fetched", "new", "quarantined", "writes planned"):
        table.add_column(c, justify="right" if c != "campaign" else "left")
    for r in summary.campaigns:
        planned = ", ".join(f"{v} {k}" for k, v in sorted(r.planned_by_kind.items()))
        table.add_row(r.drop_id + (" (page cap hit)" if r.capped else ""), str(r.pages),
                      str(r.fetched), str(r.new_events), str(r.quarantined),
                      f"{r.planned}" + (f" ({planned})" if planned else ""))
    return table


def _locations_table(summary: RunSummary) -> Table:
    table = Table(title="writes applied, by outcome")
    for c in ("location", *STATUSES, "HTTP calls", "note"):
        table.add_column(c, justify="left" if c in ("location", "note") else "right")
    for loc in summary.locations:
        table.add_row(loc.location_id, *(str(loc.outcomes.get(s, 0)) for s in STATUS_ORDER),
                      str(loc.calls), loc.stopped.value if loc.stopped else "")
    return table


def print_summary(summary: RunSummary) -> None:
    """The run's summary tables."""
    if summary.campaigns:
        console.print(_campaigns_table(summary))
    if summary.locations:
        console.print(_locations_table(summary))
    for err in summary.errors:
        err_console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)


@friendly_errors
def sync_cmd(
    config: ConfigOpt = None,
    campaign: CampaignOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Fetch and plan, report what would be written; write nothing.")] = False,
    lookback_hours: Annotated[float | None, typer.Option(
        help="Re-read events this far behind the newest stored one.")] = None,
    max_pages: Annotated[int | None, typer.Option(help="Page cap per campaign this run.")] = None,
) -> None:
    """Fetch new Postalytics events and write them to HighLevel as tags and notes."""
    ctx = open_context(config)
    summary = run_with_progress(ctx, "sync", drop_ids=campaign, dry_run=dry_run,
                                lookback_hours=lookback_hours, max_pages=max_pages)
    print_summary(summary)
    if summary.errors:
        raise typer.Exit(1)


@friendly_errors
def replay_cmd(
    config: ConfigOpt = None,
    status: Annotated[str, typer.Option(
        help="Comma-separated statuses to re-send.")] = REPLAY_DEFAULT,
    campaign: CampaignOpt = None,
    since: Annotated[datetime | None, typer.Option(
        help="Only writes planned at or after this time (UTC).")] = None,
) -> None:
    """Re-resolve contacts and re-send every write that is not done (after fixing the cause)."""
    ctx = open_context(config)
    statuses = [s.strip() for s in status.split(",") if s.strip()]
    try:
        summary = run_with_progress(ctx, "replay", statuses=statuses, drop_ids=campaign,
                                    since=since.replace(tzinfo=UTC) if since else None)
    except ValueError as exc:
        raise ConfigError(f"--status: {exc}") from None
    print_summary(summary)
    if summary.errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `sync` and `replay` to the app."""
    app.command("sync")(sync_cmd)
    app.command("replay")(replay_cmd)
