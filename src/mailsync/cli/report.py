"""`mailsync report` and `mailsync verify`: reconciliation for support staff."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
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
    literal,
    location_label,
    markup_safe,
    open_context,
    parse_when,
    say_error,
)
from mailsync.config import ConfigError
from mailsync.report.build import build_report
from mailsync.report.model import Report
from mailsync.report.render import write_report_files
from mailsync.report.verify import VerifyResult, unstored_events, verify
from mailsync.sync.context import SyncContext

FORMATS = ("table", "csv", "json", "html", "all")
FILE_FORMATS = ("csv", "json", "html")
DEFAULT_OUT = Path("reports")
TABLE_ROWS = 50
"""Problem rows shown in the terminal; the files always hold all of them."""


# -- the report in the terminal ------------------------------------------------------------

def _e(value: Any) -> str:
    """A cell's text with Rich markup made literal and control characters shown as escapes
    (outside data is data)."""
    return "" if _blank(value) else markup_safe(value)


def _counts_table(report: Report) -> Table:
    # Five columns fit an 80-column terminal; every status is in the files.
    table = Table(title="writes per campaign and location")
    table.add_column("campaign / location", overflow="fold")
    table.add_column("events\nseen/new/quar.", justify="right")
    for c in ("planned", "done", "problems"):
        table.add_column(c, justify="right")
    configured, apart = report.configured_summary()
    for rec in [*configured.to_dict("records"), *apart.to_dict("records")]:
        table.add_row(f"{_e(rec['campaign'])} ({_e(rec['drop_id'])})\n{_e(rec['location'])}",
                      f"{rec['events_seen']}/{rec['events_new']}/{rec['quarantined']}",
                      *(str(rec[c]) for c in ("planned", "done", "problems")))
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
                       f"causes, {total} writes)",
                 caption="fix: the line of \"do this first\" that unblocks the row; each "
                         "row's reason is in problems.csv")
    for c in ("#", "recipient", "campaign", "codes", "writes", "since", "fix"):
        rows.add_column(c, overflow="fold")
    for rec in report.problem_groups.head(limit).to_dict("records"):
        who = _e(rec["recipient"]) + (f"\n{_e(rec['email'])}" if rec["email"] else "")
        since = "" if _blank(rec["since"]) else f"{rec['since']:%Y-%m-%d %H:%M}"
        rows.add_row(str(rec["group"]), who, _e(rec["campaign"]), _e(rec["codes"]),
                     str(rec["writes"]), since, f"{rec['step']} {rec['problem']}")
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
            say_error(err, label="verify", style="yellow")
    if postalytics:
        unstored = asyncio.run(unstored_events(ctx, since=since, until=until, drop_ids=drop_ids))
    return drift, unstored


@friendly_errors
def report_cmd(
    config: ConfigOpt = None,
    run: Annotated[str | None, typer.Option(
        "--run", help="Only what this run planned (a sync) or attempted (a replay).")] = None,
    since: Annotated[str | None, typer.Option(
        help=f"Only writes planned since then: {SINCE_HELP}.")] = None,
    until: Annotated[str | None, typer.Option(help="... and up to then (same forms).")] = None,
    campaign: CampaignOpt = None,
    out: Annotated[Path | None, typer.Option(
        help="Write the report files (csv, json, html) to this folder; the table is still "
             "shown.")] = None,
    fmt: Annotated[str | None, typer.Option(
        "--format", help="table (default), csv, json, html or all; a file format is written "
             "to --out (default: reports/).")] = None,
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
    table, files = _outputs(fmt, out)
    start, end = parse_when(since), parse_when(until)
    ctx = open_context(config)
    drift, unstored = _live_checks(ctx, start, end, campaign, highlevel=check_highlevel,
                                   postalytics=check_postalytics)
    try:
        report = build_report(ctx.engine, run_id=run, since=start, until=end,
                              drop_ids=campaign, drift=drift, unstored=unstored,
                              pending_deadline=timedelta(hours=pending_hours),
                              settings=ctx.settings)
    except LookupError as exc:
        raise ConfigError(str(exc)) from None
    if table:
        print_report(report, console)
    if files:
        for path in write_report_files(report, out or DEFAULT_OUT, files):
            console.print(literal(f"wrote {path}"))


def _outputs(fmt: str | None, out: Path | None) -> tuple[bool, tuple[str, ...]]:
    """(show the table?, file formats to write): `--out` alone means every file and the
    table; a file format alone writes it to the default folder."""
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}: choose from {', '.join(FORMATS)}")
    if fmt in (None, "table"):
        return True, FILE_FORMATS if out is not None else ()
    if fmt == "all":
        return True, FILE_FORMATS
    return False, (fmt,)


def _drift_table(result: VerifyResult, ctx: SyncContext) -> Table:
    table = Table(title=f"{len(result.drift)} write(s) missing in HighLevel")
    for c in ("ledger id", "campaign", "location", "contact", "code", "kind", "finding"):
        table.add_column(c, overflow="fold")
    for d in result.drift:
        table.add_row(str(d.ledger_id), literal(campaign_label(ctx.settings, d.drop_id)),
                      literal(location_label(ctx.settings, d.location_id)),
                      literal(d.contact_id), literal(d.code), literal(d.kind),
                      literal(d.detail))
    return table


def _say_verified(result: VerifyResult, ctx: SyncContext, fix: bool) -> None:
    """What verify found, never more than it checked."""
    total = result.contacts_checked + result.contacts_unchecked
    if total == 0:
        console.print("Nothing to check: no contact has a done write in this range.")
        return
    if result.unchecked:
        console.print(f"Checked {result.contacts_checked} of {total} contact(s); could not "
                      f"check {result.contacts_unchecked} (why below).")
    else:
        console.print(f"Checked {result.contacts_checked} contact(s).")
    if result.drift:
        console.print(_drift_table(result, ctx))
        console.print(f"Re-opened {result.fixed} write(s): the next sync or `mailsync replay` "
                      "writes them again." if fix else
                      "Nothing changed: run with --fix to re-open them.")
    elif result.unchecked and result.contacts_checked:
        console.print(f"No drift in the {result.contacts_checked} contact(s) checked; the "
                      "others are unknown.")
    elif result.unchecked:
        console.print("Nothing could be checked: drift, if any, is unknown.")
    else:
        console.print(Text("No drift: every tag and note we wrote is there.", style="green"))
    for line in result.errors:
        say_error(line, label="warning", style="yellow")


@friendly_errors
def verify_cmd(
    config: ConfigOpt = None,
    since: Annotated[str | None, typer.Option(
        help=f"Only contacts written since then: {SINCE_HELP}.")] = None,
    campaign: CampaignOpt = None,
    fix: Annotated[bool, typer.Option(
        "--fix", help="Re-open drifted writes so the next sync or a replay re-sends them.")
    ] = False,
) -> None:
    """Read back HighLevel: list tags and notes we wrote that are no longer there.

    Exit code 5 when drift was found, 6 when some contacts could not be checked (and no
    drift was found in the others), 0 when every contact was checked and nothing drifted.
    """
    start = parse_when(since)
    ctx = open_context(config)
    result = asyncio.run(verify(ctx, since=start, drop_ids=campaign, fix=fix))
    _say_verified(result, ctx, fix)
    if result.drift:
        raise typer.Exit(ExitCode.drift)
    if result.unchecked:
        raise typer.Exit(ExitCode.unchecked)


def register(app: typer.Typer) -> None:
    """Add `report` and `verify` to the app."""
    app.command("report")(report_cmd)
    app.command("verify")(verify_cmd)
