"""`mailsync sync` and `mailsync replay`: a run with live progress, then its summary tables."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from mailsync.cli.options import (
    SINCE_HELP,
    CampaignOpt,
    ConfigOpt,
    ExitCode,
    campaign_label,
    console,
    friendly_errors,
    labels,
    lines,
    literal,
    location_label,
    open_context,
    parse_when,
    say_error,
)
from mailsync.config import ConfigError, Settings
from mailsync.report.columns import STATUS_ORDER, STATUSES
from mailsync.report.rules import mask_email
from mailsync.store.ledger import REPLAY_STATUSES
from mailsync.store.models import WriteStatus, utcnow
from mailsync.store.runs import ErrorKind
from mailsync.sync.context import SyncContext
from mailsync.sync.fetch import CampaignResult
from mailsync.sync.runner import (
    DryRunPlan,
    RunHooks,
    RunSummary,
    grouped_errors,
    run_replay,
    run_sync,
    unanswered_writes,
)

REPLAY_DEFAULT = ",".join(s.value for s in STATUS_ORDER if s != WriteStatus.done)
"""Every status but done: what `mailsync replay` re-sends unless told otherwise."""


class _CountColumn(ProgressColumn):
    """`12/186` where the total is known; where it is not (pages are not known in advance),
    what has been read so far and how fast, instead of `?`."""

    def render(self, task: Task) -> Text:
        done = int(task.completed)
        if task.total is not None:
            return Text(f"{done:,}/{int(task.total):,}")
        speed = task.speed
        rate = f", {speed:,.0f}/s" if speed else ""
        return Text(f"{task.fields.get('pages', 0):,} pages, {done:,} events{rate}")


class _RunProgress:
    """Progress bars for one run: events read per campaign, writes per location. A writes bar
    never passes its total: rows another worker planned meanwhile raise the total."""

    def __init__(self, bar: Progress, settings: Settings) -> None:
        self.bar, self.settings = bar, settings
        self.pages: dict[str, TaskID] = {}
        self.writes: dict[str, TaskID] = {}

    def on_page(self, res: CampaignResult) -> None:
        name = campaign_label(self.settings, res.drop_id)
        if res.drop_id not in self.pages:
            self.pages[res.drop_id] = self.bar.add_task("", total=None)
        self.bar.update(self.pages[res.drop_id], completed=res.fetched, pages=res.pages,
                        description=f"fetch {name}: {res.new_events:,} new")

    def on_apply(self, location_id: str, total: int) -> None:
        name = location_label(self.settings, location_id)
        self.writes[location_id] = self.bar.add_task(f"apply {name}", total=total)

    def on_write(self, location_id: str, n: int) -> None:
        if location_id not in self.writes:
            self.on_apply(location_id, 0)
        task_id = self.writes[location_id]
        task = self.bar.tasks[task_id]
        done = int(task.completed) + n
        total = max(int(task.total or 0), done)
        self.bar.update(task_id, completed=done, total=total)


def run_with_progress(ctx: SyncContext, job: str, **kwargs: Any) -> RunSummary:
    """Run a sync or replay with live progress: events per campaign, writes per location."""
    # Outside data (campaign and location names) in descriptions: never read as markup.
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), _CountColumn(),
               TimeElapsedColumn())
    # Transient: the summary tables that follow say where each ended; a bar left behind
    # (or an empty line when a run stopped before any) would only repeat or confuse them.
    # Not on a terminal (cron, a pipe, a log): no live display at all, only the summary.
    with Progress(*columns, console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        shown = _RunProgress(bar, ctx.settings)
        hooks = RunHooks(on_page=shown.on_page, on_apply=shown.on_apply,
                         progress=shown.on_write)
        if job == "sync":
            return asyncio.run(run_sync(ctx, hooks=hooks, **kwargs))
        return asyncio.run(run_replay(ctx, hooks=hooks, **kwargs))


def _campaigns_table(summary: RunSummary, settings: Settings) -> Table:
    table = Table(title=f"{summary.kind} {summary.run_id}: campaigns"
                  + (" (dry run: nothing written)" if summary.dry_run else ""))
    for c in ("campaign", "pages", "events fetched", "new", "quarantined", "writes planned"):
        table.add_column(c, justify="right" if c != "campaign" else "left")
    for r in summary.campaigns:
        planned = ", ".join(f"{v} {k}" for k, v in sorted(r.planned_by_kind.items()))
        name = campaign_label(settings, r.drop_id) + (" (page cap hit)" if r.capped else "")
        table.add_row(literal(name), str(r.pages), str(r.fetched), str(r.new_events),
                      str(r.quarantined), f"{r.planned}" + (f" ({planned})" if planned else ""))
    return table


def _locations_table(summary: RunSummary, settings: Settings) -> Table:
    table = Table(title="writes applied, by outcome")
    for c in ("location", *STATUSES, "HTTP calls", "note"):
        table.add_column(c, justify="left" if c in ("location", "note") else "right")
    for loc in summary.locations:
        table.add_row(literal(location_label(settings, loc.location_id)),
                      *(str(loc.outcomes.get(s, 0)) for s in STATUS_ORDER),
                      str(loc.calls), loc.stopped.value if loc.stopped else "")
    return table


def _plan_counts_table(plan: DryRunPlan, settings: Settings) -> Table:
    table = Table(title=f"would write {plan.total:,} (by campaign and event code)")
    kinds = sorted({kind for _, _, kind in plan.counts})
    for c in ("campaign", "code", *kinds):
        table.add_column(c, justify="left" if c in ("campaign", "code") else "right")
    rows: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for (drop_id, code, kind), n in plan.counts.items():
        rows[(drop_id, code)][kind] += n
    for (drop_id, code), by_kind in sorted(rows.items()):
        table.add_row(literal(campaign_label(settings, drop_id)), literal(code),
                      *(str(by_kind.get(k, 0)) for k in kinds))
    return table


def _plan_rows_table(plan: DryRunPlan, settings: Settings) -> Table:
    table = Table(title=f"the first {len(plan.sample)} write(s)")
    for c in ("campaign", "location", "recipient", "write", "tag or note"):
        table.add_column(c, overflow="fold")
    for w in plan.sample:
        table.add_row(literal(campaign_label(settings, w.drop_id)),
                      literal(location_label(settings, w.location_id)),
                      lines(w.recipient, mask_email(w.email)), literal(f"{w.kind} {w.code}"),
                      literal(w.text))
    return table


def print_plan(plan: DryRunPlan, settings: Settings) -> None:
    """What a dry run would write: counts by campaign and code, then the first rows."""
    if not plan.total:
        console.print("Nothing new to write.")
        return
    console.print(_plan_counts_table(plan, settings))
    console.print(_plan_rows_table(plan, settings))


def print_errors(summary: RunSummary, settings: Settings) -> None:
    """Each distinct run error once, naming every campaign or location it stopped."""
    for group in grouped_errors(summary.errors):
        where = labels(settings, group.scope, group.targets)
        # A client's message that already names its one location needs no prefix.
        single = len(group.targets) == 1 and group.targets[0] in group.message
        say_error(group.message if single else f"{where}: {group.message}")


def print_unanswered(ctx: SyncContext, summary: RunSummary, started: datetime) -> int:
    """Writes HighLevel did not answer in this run, once per reason; returns how many."""
    found = unanswered_writes(ctx, started, [loc.location_id for loc in summary.locations])
    by_reason: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for u in found:
        by_reason[u.reason].append((u.location_id, u.writes))
    for reason, where in by_reason.items():
        total = sum(n for _, n in where)
        names = labels(ctx.settings, "location", [loc for loc, _ in where])
        say_error(f"{names}: {total} write(s) got no answer and wait for the next run: "
                  f"{reason}", label="warning", style="yellow")
    return sum(u.writes for u in found)


def print_summary(summary: RunSummary, settings: Settings) -> None:
    """The run's summary tables (and, for a dry run, what it would write)."""
    if summary.campaigns:
        console.print(_campaigns_table(summary, settings))
    if summary.plan is not None:
        print_plan(summary.plan, settings)
    if summary.locations:
        console.print(_locations_table(summary, settings))
    print_errors(summary, settings)


_EXIT_FOR_KIND = {ErrorKind.config: ExitCode.bad_input, ErrorKind.store: ExitCode.store,
                  ErrorKind.unreachable: ExitCode.remote, ErrorKind.credentials: ExitCode.remote,
                  ErrorKind.remote: ExitCode.remote, ErrorKind.internal: ExitCode.internal}


def run_exit_code(summary: RunSummary, unanswered: int = 0) -> ExitCode:
    """0 when all went through; the failure's own code when nothing did (one cause stopped
    every campaign, and no location wrote anything); 1 (partial) when some did and some did
    not, or writes got no answer."""
    if not summary.errors:
        return ExitCode.partial if unanswered else ExitCode.ok
    kinds = {e.kind for e in summary.errors}
    wrote = any(sum(loc.outcomes.values()) for loc in summary.locations)
    if not summary.campaigns and not wrote and len(kinds) == 1:
        return _EXIT_FOR_KIND[kinds.pop()]
    return ExitCode.partial


def _finish(ctx: SyncContext, summary: RunSummary, started: datetime) -> None:
    print_summary(summary, ctx.settings)
    unanswered = 0 if summary.dry_run else print_unanswered(ctx, summary, started)
    code = run_exit_code(summary, unanswered)
    if code != ExitCode.ok:
        raise typer.Exit(code)


@friendly_errors
def sync_cmd(
    config: ConfigOpt = None,
    campaign: CampaignOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Fetch and plan, show what would be written; write nothing.")] = False,
    lookback_hours: Annotated[float | None, typer.Option(
        help="Re-read events this far behind the newest stored one.")] = None,
    max_pages: Annotated[int | None, typer.Option(help="Page cap per campaign this run.")] = None,
) -> None:
    """Fetch new Postalytics events and write them to HighLevel as tags and notes."""
    ctx = open_context(config)
    started = utcnow()
    summary = run_with_progress(ctx, "sync", drop_ids=campaign, dry_run=dry_run,
                                lookback_hours=lookback_hours, max_pages=max_pages)
    _finish(ctx, summary, started)


@friendly_errors
def replay_cmd(
    config: ConfigOpt = None,
    status: Annotated[str, typer.Option(
        help="Comma-separated statuses to re-send.")] = REPLAY_DEFAULT,
    campaign: CampaignOpt = None,
    since: Annotated[str | None, typer.Option(
        help=f"Only writes planned since then: {SINCE_HELP}.")] = None,
) -> None:
    """Re-resolve contacts and re-send every write that is not done (after fixing the cause)."""
    start = parse_when(since)
    statuses = [s.strip() for s in status.split(",") if s.strip()]
    allowed = [s.value for s in REPLAY_STATUSES]
    for s in statuses:
        if s not in allowed:
            raise ConfigError(f"--status: cannot replay {s!r}: choose from {', '.join(allowed)}")
    ctx = open_context(config)
    started = utcnow()
    summary = run_with_progress(ctx, "replay", statuses=statuses, drop_ids=campaign,
                                since=start)
    _finish(ctx, summary, started)


def register(app: typer.Typer) -> None:
    """Add `sync` and `replay` to the app."""
    app.command("sync")(sync_cmd)
    app.command("replay")(replay_cmd)
