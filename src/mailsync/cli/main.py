"""The `mailsync` command line."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mailsync.cli.demo import DEMO_FAULTS, run_demo
from mailsync.cli.report import register as register_report_commands
from mailsync.codes import MAIL_CODES
from mailsync.config import ConfigError, Settings, load_settings
from mailsync.redact import install_log_redaction
from mailsync.sandbox.cli import sandbox_app
from mailsync.store.engine import head_revision, safe_url, upgrade_database
from mailsync.sync.context import SyncContext
from mailsync.sync.fetch import CampaignResult
from mailsync.sync.runner import RunSummary, run_replay, run_sync

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Bring Postalytics direct-mail events into HighLevel contacts.")
db_app = typer.Typer(no_args_is_help=True, help="The mailsync database.")
config_app = typer.Typer(no_args_is_help=True, help="The configuration file.")
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")

console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $MAILSYNC_CONFIG or mailsync.toml)"),
]
F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    """Turn expected failures into one line on stderr and exit code 2, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            line = f"[red]error:[/red] {escape(str(exc))}"
            err_console.print(line, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def settings_from(config: Path | None) -> Settings:
    """Load the settings for a command."""
    return load_settings(config)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Log every retry and request outcome.")] = False) -> None:
    """Bring Postalytics direct-mail events into HighLevel contacts."""
    import logging

    from rich.logging import RichHandler

    install_log_redaction()
    handler = RichHandler(console=err_console, show_path=False, markup=False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(message)s", handlers=[handler], force=True)
    if not verbose:  # httpx logs every request at INFO
        logging.getLogger("httpx").setLevel(logging.WARNING)


@db_app.command("upgrade")
@friendly_errors
def db_upgrade(config: ConfigOpt = None) -> None:
    """Create or migrate the database's tables to this version (a no-op when current)."""
    settings = settings_from(config)
    url = settings.database.url
    before, after = upgrade_database(url)
    where = safe_url(url)
    if before == after:
        console.print(f"{where}: already at revision {after}; nothing to do.")
    else:
        console.print(f"{where}: upgraded from {before or 'empty'} to {after}.")


@db_app.command("revision")
def db_revision() -> None:
    """Print the newest schema revision this version ships."""
    console.print(head_revision())


@config_app.command("check")
@friendly_errors
def config_check(config: ConfigOpt = None) -> None:
    """Validate a config file and say what it found."""
    settings = settings_from(config)
    pa = settings.postalytics
    console.print(f"[bold]{settings.source}[/bold] is valid.")
    console.print(f"Database: {safe_url(settings.database.url)}")
    console.print(f"Postalytics account {pa.account!r} at {pa.base_url}, "
                  f"API key from {pa.api_key.describe()}")
    console.print(f"HighLevel at {settings.highlevel.base_url}")
    table = Table(title=f"{len(settings.locations)} location(s)")
    for col in ("location", "auth", "credentials from"):
        table.add_column(col)
    for loc in settings.locations:
        if loc.oauth:
            table.add_row(loc.id, "OAuth", loc.oauth.ref("refresh_token").describe())
        else:
            assert loc.token is not None
            table.add_row(loc.id, "Private Integration Token", loc.token.describe())
    console.print(table)
    table = Table(title=f"{len(settings.campaigns)} campaign(s)")
    for col in ("drop id", "location", "country", "codes written", "contact id field"):
        table.add_column(col)
    for camp in settings.campaigns:
        codes = [c.value for c in MAIL_CODES if c in camp.selected_codes]
        table.add_row(camp.drop_id, camp.location, camp.country, ", ".join(codes),
                      camp.contact_id_field or "(match by email, phone)")
    console.print(table)


def _progress_columns() -> tuple[Any, ...]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn())


def run_with_progress(ctx: SyncContext, job: str, **kwargs: Any) -> RunSummary:
    """Run a sync or replay with live progress: pages per campaign, writes per location."""
    from rich.progress import Progress

    with Progress(*_progress_columns(), console=console, transient=False) as bar:
        pages: dict[str, Any] = {}
        writes: dict[str, Any] = {}

        def on_page(res: CampaignResult) -> None:
            if res.drop_id not in pages:
                pages[res.drop_id] = bar.add_task(f"fetch campaign {res.drop_id}", total=None)
            bar.update(pages[res.drop_id], completed=res.pages,
                       description=f"fetch campaign {res.drop_id}: {res.new_events} new events")

        def on_write(location_id: str, n: int) -> None:
            if location_id not in writes:
                total = open_count(ctx, location_id, kwargs.get("statuses"))
                writes[location_id] = bar.add_task(f"apply location {location_id}", total=total)
            bar.advance(writes[location_id], n)

        if job == "sync":
            return asyncio.run(run_sync(ctx, on_page=on_page, progress=on_write, **kwargs))
        return asyncio.run(run_replay(ctx, progress=on_write, **kwargs))


def print_summary(summary: RunSummary) -> None:
    """The run's summary tables."""
    if summary.campaigns:
        table = Table(title=f"{summary.kind} {summary.run_id}: campaigns"
                      + (" (dry run: nothing written)" if summary.dry_run else ""))
        for c in ("campaign", "pages", "events fetched", "new", "quarantined", "writes planned"):
            table.add_column(c, justify="right" if c != "campaign" else "left")
        for r in summary.campaigns:
            planned = ", ".join(f"{v} {k}" for k, v in sorted(r.planned_by_kind.items()))
            table.add_row(r.drop_id + (" (page cap hit)" if r.capped else ""), str(r.pages),
                          str(r.fetched), str(r.new_events), str(r.quarantined),
                          f"{r.planned}" + (f" ({planned})" if planned else ""))
        console.print(table)
    if summary.locations:
        table = Table(title="writes applied, by outcome")
        statuses = ["done", "rejected", "failed", "unknown", "pending"]
        for c in ("location", *statuses, "HTTP calls", "note"):
            table.add_column(c, justify="left" if c in ("location", "note") else "right")
        for loc in summary.locations:
            table.add_row(loc.location_id, *(str(loc.outcomes.get(s, 0)) for s in statuses),
                          str(loc.calls), loc.stopped or "")
        console.print(table)
    for err in summary.errors:
        err_console.print(f"[red]error:[/red] {escape(err)}", soft_wrap=True)


@app.command("sync")
@friendly_errors
def sync_cmd(
    config: ConfigOpt = None,
    campaign: Annotated[list[str] | None, typer.Option(
        "--campaign", help="Only this drop id (repeatable).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Fetch and plan, report what would be written; write nothing.")] = False,
    lookback_hours: Annotated[float | None, typer.Option(
        help="Re-read events this far behind the newest stored one.")] = None,
    max_pages: Annotated[int | None, typer.Option(help="Page cap per campaign this run.")] = None,
) -> None:
    """Fetch new Postalytics events and write them to HighLevel as tags and notes."""
    ctx = SyncContext(load_settings(config))
    summary = run_with_progress(ctx, "sync", drop_ids=campaign, dry_run=dry_run,
                                lookback_hours=lookback_hours, max_pages=max_pages)
    print_summary(summary)
    if summary.errors:
        raise typer.Exit(1)


@app.command("replay")
@friendly_errors
def replay_cmd(
    config: ConfigOpt = None,
    status: Annotated[str, typer.Option(
        help="Comma-separated statuses to re-send.")] = "rejected,failed,unknown,pending",
    campaign: Annotated[list[str] | None, typer.Option(
        "--campaign", help="Only this drop id (repeatable).")] = None,
    since: Annotated[datetime | None, typer.Option(
        help="Only writes planned at or after this time (UTC).")] = None,
) -> None:
    """Re-resolve contacts and re-send every write that is not done (after fixing the cause)."""
    ctx = SyncContext(load_settings(config))
    statuses = [s.strip() for s in status.split(",") if s.strip()]
    try:
        summary = run_with_progress(ctx, "replay", statuses=statuses, drop_ids=campaign,
                                    since=since.replace(tzinfo=UTC) if since else None)
    except ValueError as exc:
        raise ConfigError(f"--status: {exc}") from None
    print_summary(summary)
    if summary.errors:
        raise typer.Exit(1)


def open_count(ctx: SyncContext, location_id: str, statuses: Any = None) -> int:
    """How many ledger rows the apply of a location will look at (for the progress bar)."""
    from sqlmodel import Session, col, func, select

    from mailsync.store.models import WriteIntent
    from mailsync.sync.apply import SYNC_STATUSES

    with Session(ctx.engine) as s:
        return s.exec(select(func.count()).select_from(WriteIntent).where(
            WriteIntent.location_id == location_id,
            col(WriteIntent.status).in_(list(statuses or SYNC_STATUSES)))).one()


@app.command("demo")
@friendly_errors
def demo_cmd(
    out: Annotated[Path, typer.Option(help="Where the report files go.")] = Path("reports"),
    rounds: Annotated[int, typer.Option(help="Sync rounds while the mail moves.")] = 6,
    contacts: Annotated[int, typer.Option(help="Recipients in the sandbox scenario.")] = 60,
    seed: Annotated[int, typer.Option(help="Scenario seed.")] = 7,
    faults: Annotated[str, typer.Option(help="Sandbox fault SPEC (see docs/sandbox.md).")]
        = DEMO_FAULTS,
) -> None:
    """Run the whole job against the built-in sandbox (no credentials), then check the result."""
    def on_round(i: int, summary: RunSummary) -> None:
        totals = summary.outcome_totals()
        new = sum(c.new_events for c in summary.campaigns)
        q = sum(c.quarantined for c in summary.campaigns)
        console.print(f"  synced: {new} new events ({q} quarantined); writes "
                      + ", ".join(f"{v} {k}" for k, v in sorted(totals.items()))
                      + (f"; errors: {summary.errors}" if summary.errors else ""))

    result = run_demo(out, rounds=rounds, contacts=contacts, seed=seed, faults=faults,
                      say=console.print, on_round=on_round)
    hl = result.stats.get("highlevel", {}).get("total", {})
    console.print(f"HighLevel saw {hl.get('requests', 0)} requests, "
                  f"{hl.get('rate_limited', 0)} over its rate limit, faults injected: "
                  f"{hl.get('faults', {})}.")
    for kind, count, action in result.problems:
        console.print(f"  {count} problem write(s), {kind}: {action}")
    for path in result.report_files:
        console.print(f"Report: {path}")
    if result.end.exact:
        console.print(f"[green]End state matches Postalytics' ground truth[/green]: "
                      f"{result.end.describe()}")
    else:
        err_console.print(f"[red]End state differs[/red]: {result.end.describe()}")
        raise typer.Exit(1)


app.add_typer(sandbox_app, name="sandbox", help="Both APIs simulated over real HTTP.")
register_report_commands(app)


def main() -> None:
    """Entry point for `python -m mailsync`."""
    app(prog_name="mailsync")


if __name__ == "__main__":
    sys.exit(main())
