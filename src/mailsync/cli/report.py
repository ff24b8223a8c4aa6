"""`mailsync report` and `mailsync verify`: reconciliation for support staff."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
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
from mailsync.report.build import build_report
from mailsync.report.columns import STATUSES
from mailsync.report.model import Report
from mailsync.report.render import write_report_files
from mailsync.report.verify import VerifyResult, unstored_events, verify
from mailsync.sync.context import SyncContext

FORMATS = ("table", "csv", "json", "html", "all")
TABLE_ROWS = 50
"""Problem rows shown in the terminal; the files always hold all of them."""


def parse_when(text: str | None, now: datetime | None = None) -> datetime | None:
    """`24h`, `7d`, `90m` ago, or an ISO 8601 date/time (UTC when no zone is given)."""
    if text is None or not text.strip():
        return None
    now = now or datetime.now(UTC)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhd])\s*", text)
    if m:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return now - timedelta(**{unit: float(m.group(1))})
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"cannot read the time {text!r}: use e.g. 24h, 7d, 2026-11-20 "
                          "or 2026-11-20T08:00") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


# -- the report in the terminal ------------------------------------------------------------

def _e(value: Any) -> str:
    """A cell's text with Rich markup made literal (outside data is data)."""
    return "" if _blank(value) else escape(str(value))


def _counts_table(report: Report) -> Table:
    table = Table(title="writes per campaign and location")
    table.add_column("campaign / location")
    table.add_column("events\nseen/new/quar.", justify="right")
    for c in ("planned", *STATUSES, "problems"):
        table.add_column(c, justify="right")
    configured, apart = report.configured_summary()
    for rec in [*configured.to_dict("records"), *apart.to_dict("records")]:
        table.add_row(f"{_e(rec['campaign'])} ({_e(rec['drop_id'])})\n{_e(rec['location'])}",
                      f"{rec['events_seen']}/{rec['events_new']}/{rec['quarantined']}",
                      *(str(rec[c]) for c in ("planned", *STATUSES, "problems")))
    return table


def _steps_table(report: Report) -> Table:
    steps = Table(title="do this first")
    for c in ("#", "what to do", "where", "recipients", "writes"):
        steps.add_column(c, overflow="fold")
    for rec in report.first_steps().to_dict("records"):
        steps.add_row(str(rec["step"]), _e(rec["action"]), _e(rec["location"]),
                      str(rec["recipients"]), str(rec["writes"]))
    return steps


def _groups_table(report: Report, limit: int) -> Table:
    total = int(report.problem_groups["writes"].sum())
    rows = Table(title=f"problems by recipient ({len(report.problem_groups)} recipients and "
                       f"causes, {total} writes)")
    for c in ("#", "campaign", "recipient", "codes", "writes", "since", "problem", "reason"):
        rows.add_column(c, overflow="fold")
    for rec in report.problem_groups.head(limit).to_dict("records"):
        who = _e(rec["recipient"]) + (f"\n{_e(rec['email'])}" if rec["email"] else "")
        since = "" if _blank(rec["since"]) else f"{rec['since']:%Y-%m-%d %H:%M}"
        rows.add_row(str(rec["group"]), _e(rec["campaign"]), who, _e(rec["codes"]),
                     str(rec["writes"]), since, rec["problem"], _e(rec["reason"]))
    return rows


def print_report(report: Report, console: Console, limit: int = TABLE_ROWS) -> None:
    """The report as rich tables: counts per campaign, what to do first, and the problems
    grouped by recipient and cause (one row per recipient, not per write).

    Compact on purpose (terminals are often 80-120 columns): the action of each fix is in
    the "do this first" table, so the rows need not repeat it; the files carry every column
    and every write.
    """
    console.print(_counts_table(report))
    if report.problems.empty:
        console.print("[green]No problem writes: everything planned was written.[/green]")
    else:
        if not report.first_steps().empty:
            console.print(_steps_table(report))
        console.print(_groups_table(report, limit))
        if len(report.problem_groups) > limit:
            console.print(f"... {len(report.problem_groups) - limit} more: write them with "
                          "--format csv (problems.csv; every write in problem_writes.csv)")
    console.print(f"Times are in {escape(report.names.zone_name)}.")
    if not report.quarantined.empty:
        console.print(f"{len(report.quarantined)} quarantined event(s); reasons: "
                      + ", ".join(f"{_e(r)} ({n})" for r, n in
                                  report.quarantined["problem"].value_counts().items()))
    if not report.unstored.empty:
        console.print(f"[yellow]{len(report.unstored)} event(s) at Postalytics never reached "
                      "the store: run `mailsync sync`.[/yellow]")


def _blank(value: Any) -> bool:
    try:
        return value is None or bool(value != value) or str(value) in ("NaT", "<NA>")
    except (TypeError, ValueError):
        return False


# -- commands --------------------------------------------------------------------------------

def _live_checks(ctx: SyncContext, since: datetime | None, until: datetime | None,
                 drop_ids: list[str] | None, *, highlevel: bool,
                 postalytics: bool) -> tuple[list[Any], list[dict[str, Any]]]:
    """(drift, unstored events): what only HighLevel and Postalytics can tell, when asked."""
    drift: list[Any] = []
    unstored: list[dict[str, Any]] = []
    if highlevel:
        found = asyncio.run(verify(ctx, since=since, until=until, drop_ids=drop_ids))
        drift = found.drift
        for err in found.errors:
            err_console.print(f"[yellow]verify:[/yellow] {escape(err)}", soft_wrap=True,
                              highlight=False)
    if postalytics:
        unstored = asyncio.run(unstored_events(ctx, since=since, until=until, drop_ids=drop_ids))
    return drift, unstored


@friendly_errors
def report_cmd(
    config: ConfigOpt = None,
    run: Annotated[str | None, typer.Option(
        "--run", help="Only what this run planned (a sync) or attempted (a replay).")] = None,
    since: Annotated[str | None, typer.Option(
        help="Only writes planned since then: 24h, 7d or a date/time (UTC).")] = None,
    until: Annotated[str | None, typer.Option(help="... and up to then.")] = None,
    campaign: CampaignOpt = None,
    out: Annotated[Path, typer.Option(help="Folder for csv, json and html files.")] = Path(
        "reports"),
    fmt: Annotated[str, typer.Option(
        "--format", help="table, csv, json, html or all.")] = "table",
    pending_hours: Annotated[float, typer.Option(
        help="A write still pending this long after it was planned is missed.")] = 24.0,
    check_highlevel: Annotated[bool, typer.Option(
        "--verify", help="Also read HighLevel back for drift (as `mailsync verify`).")
    ] = False,
    check_postalytics: Annotated[bool, typer.Option(
        "--check-postalytics", help="Also list events at Postalytics the store lacks.")
    ] = False,
) -> None:
    """Which writes were missed or rejected, why, and what to do: for support staff."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}: choose from {', '.join(FORMATS)}")
    ctx = open_context(config)
    start, end = parse_when(since), parse_when(until)
    drift, unstored = _live_checks(ctx, start, end, campaign, highlevel=check_highlevel,
                                   postalytics=check_postalytics)
    try:
        report = build_report(ctx.engine, run_id=run, since=start, until=end,
                              drop_ids=campaign, drift=drift, unstored=unstored,
                              pending_deadline=timedelta(hours=pending_hours),
                              settings=ctx.settings)
    except LookupError as exc:
        raise ConfigError(str(exc)) from None
    if fmt in ("table", "all"):
        print_report(report, console)
    if fmt != "table":
        formats = ("csv", "json", "html") if fmt == "all" else (fmt,)
        for path in write_report_files(report, out, formats):
            console.print(f"wrote {path}")


def _drift_table(result: VerifyResult) -> Table:
    table = Table(title=f"{len(result.drift)} write(s) missing in HighLevel")
    for c in ("ledger id", "campaign", "location", "contact", "code", "kind", "finding"):
        table.add_column(c)
    for d in result.drift:
        table.add_row(str(d.ledger_id), d.drop_id, d.location_id, d.contact_id, d.code,
                      d.kind, d.detail)
    return table


@friendly_errors
def verify_cmd(
    config: ConfigOpt = None,
    since: Annotated[str | None, typer.Option(
        help="Only contacts written since then: 24h, 7d or a date/time (UTC).")] = None,
    campaign: CampaignOpt = None,
    fix: Annotated[bool, typer.Option(
        "--fix", help="Re-open drifted writes so the next sync or a replay re-sends them.")
    ] = False,
) -> None:
    """Read back HighLevel: list tags and notes we wrote that are no longer there."""
    ctx = open_context(config)
    result = asyncio.run(verify(ctx, since=parse_when(since), drop_ids=campaign, fix=fix))
    console.print(f"Checked {result.contacts_checked} contact(s).")
    if not result.drift:
        console.print("[green]No drift: every tag and note we wrote is there.[/green]")
    else:
        console.print(_drift_table(result))
        if fix:
            console.print(f"Re-opened {result.fixed} write(s): the next sync or "
                          "`mailsync replay` writes them again.")
        else:
            console.print("Nothing changed: run with --fix to re-open them.")
    for err in result.errors:
        err_console.print(f"[red]could not check:[/red] {escape(err)}", soft_wrap=True,
                          highlight=False)
    if result.errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `report` and `verify` to the app."""
    app.command("report")(report_cmd)
    app.command("verify")(verify_cmd)
