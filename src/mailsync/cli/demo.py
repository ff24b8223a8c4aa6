"""`mailsync demo`: the whole job against the built-in sandbox, with faults, then a check.

`run_demo` is the library part (the command only prints what it says and finds). Also home of
`sandbox_config`, which turns a sandbox manifest into a config file and the environment
holding its secrets: the demo, the tests and the benchmarks all start from it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from mailsync.cli.options import ExitCode, console, friendly_errors, literal, say_error
from mailsync.config import Settings, load_settings
from mailsync.report.build import build_report
from mailsync.report.render import write_report_files
from mailsync.sandbox.endstate import EndState, compare
from mailsync.sandbox.server import SandboxServer
from mailsync.sync.context import SyncContext
from mailsync.sync.runner import RunSummary, run_sync

DEMO_FAULTS = "error=0.05,slow=0.02,reset=0.02,drop=0.03,burst429=0.01,slow_seconds=60"


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return f"[{', '.join(_toml_str(str(v)) for v in value)}]"
    if isinstance(value, int | float):
        return str(value)
    return _toml_str(str(value))


def _location_lines(i: int, loc: Mapping[str, Any], env_prefix: str,
                    env: dict[str, str]) -> list[str]:
    """One `[[locations]]` table; its secrets go into `env` under the names it gives."""
    lines = ["[[locations]]", f"id = {_toml_str(loc['id'])}",
             f"name = {_toml_str(loc.get('name') or loc['id'])}"]
    oauth = loc.get("auth") == "oauth"
    if oauth:
        lines.append("[locations.oauth]")
    for part in ("client_id", "client_secret", "refresh_token") if oauth else ("token",):
        var = f"{env_prefix}_LOC{i}_{part.upper()}"
        env[var] = loc[part]
        lines.append(f'{part}_env = "{var}"')
    return [*lines, ""]


def _campaign_lines(camp: Mapping[str, Any], extra: Mapping[str, Any]) -> list[str]:
    """One `[[campaigns]]` table, with the per-drop settings in `extra`."""
    lines = ["[[campaigns]]", f"drop_id = {_toml_str(str(camp['drop_id']))}",
             f"name = {_toml_str(camp['name'])}", f"location = {_toml_str(camp['location'])}",
             f"country = {_toml_str(camp['country'])}"]
    if camp.get("contact_id_field"):
        lines.append(f"contact_id_field = {_toml_str(camp['contact_id_field'])}")
    lines += [f"{key} = {_toml_value(value)}" for key, value in extra.items()]
    return [*lines, ""]


def sandbox_config(manifest: Mapping[str, Any], database_url: str, *,
                   campaigns: Mapping[str, Mapping[str, Any]] | None = None,
                   env_prefix: str = "MAILSYNC_SANDBOX",
                   postalytics_rate: float | None = None) -> tuple[str, dict[str, str]]:
    """A config file's text for a sandbox, and the environment variables it names.

    `campaigns` adds per-drop settings (e.g. `{"40211": {"retrigger": ["pURLOpened"]}}`).
    `postalytics_rate` defaults to Postalytics' 3 requests/s scaled by the sandbox's time
    scale, which shrinks every window alike.
    """
    rate = postalytics_rate or 3.0 / float(manifest.get("time_scale") or 1.0)
    env = {f"{env_prefix}_POSTALYTICS_KEY": manifest["postalytics_api_key"]}
    lines = [
        "[database]", f"url = {_toml_str(database_url)}", "",
        "[postalytics]", f"base_url = {_toml_str(manifest['postalytics_base_url'])}",
        'account = "sandbox"', f'api_key_env = "{env_prefix}_POSTALYTICS_KEY"',
        f"requests_per_second = {rate:g}", "",
        "[highlevel]", f"base_url = {_toml_str(manifest['highlevel_base_url'])}",
        "daily_reserve = 0", "",
    ]
    for i, loc in enumerate(manifest["locations"], 1):
        lines += _location_lines(i, loc, env_prefix, env)
    extra = campaigns or {}
    for camp in manifest["campaigns"]:
        lines += _campaign_lines(camp, extra.get(str(camp["drop_id"]), {}))
    return "\n".join(lines), env


def write_sandbox_config(manifest: Mapping[str, Any], directory: Path, database_url: str,
                         **kw: Any) -> tuple[Path, dict[str, str]]:
    """Write the sandbox's config file into `directory`; returns its path and environment."""
    text, env = sandbox_config(manifest, database_url, **kw)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "mailsync.sandbox.toml"
    path.write_text(text, encoding="utf-8")
    return path, env


def end_state(sandbox: Any, settings: Settings) -> EndState:
    """Compare a running sandbox's HighLevel with its truth, under these settings' codes."""
    selected = {c.drop_id: c.selected_codes for c in settings.campaigns}
    return compare(sandbox.truth(), sandbox.recipients(), sandbox.state(), selected)


@dataclass
class DemoResult:
    """What the demo did and found."""

    rounds: list[RunSummary]
    end: EndState
    report_files: list[Path]
    stats: dict[str, Any]
    problems: list[tuple[str, int, int]]
    """The report's "do this first" steps: (action, recipients, writes it unblocks)."""
    """(problem kind, rows, action for support) from the reconciliation report."""


def run_demo(out_dir: Path, *, rounds: int = 6, hours_per_round: float = 24.0,
             faults: str = DEMO_FAULTS, seed: int = 7, contacts: int = 60,
             time_scale: float = 0.05, messy: bool = True,
             say: Callable[[str], None] = print,
             on_round: Callable[[int, RunSummary], None] | None = None) -> DemoResult:
    """Start the sandbox, sync while its scenario advances (faults on), report, and check."""
    out_dir.mkdir(parents=True, exist_ok=True)
    db_path = out_dir / "demo.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    with SandboxServer(seed=seed, contacts=contacts, time_scale=time_scale, messy=messy) as sb:
        manifest = sb.manifest()
        say(f"Sandbox up at {sb.url}: {len(manifest['campaigns'])} campaigns, "
            f"{len(manifest['locations'])} HighLevel locations, {contacts} recipients.")
        path, env = write_sandbox_config(manifest, out_dir, f"sqlite:///{db_path}")
        os.environ.update(env)
        settings = load_settings(path)
        ctx = SyncContext(settings, timeout=2.0)
        sb.set_faults(faults)
        say(f"Faults on: {faults}")
        summaries: list[RunSummary] = []
        for i in range(1, rounds + 2):
            if i <= rounds:
                adv = sb.advance(hours_per_round)
                say(f"Round {i}: +{hours_per_round:g} h of mail, {adv['emitted']} new events "
                    f"at Postalytics (clock {adv['clock']}).")
            else:
                sb.set_faults(None)
                say("Final round with faults off: settle what the faults left open.")
            summary = asyncio.run(run_sync(ctx))
            summaries.append(summary)
            if on_round:
                on_round(i, summary)
        end = end_state(sb, settings)
        stats = sb.stats()
    rep = build_report(ctx.engine, settings=settings)
    files = write_report_files(rep, out_dir)
    steps = [(f"{s['location']}: {s['action']}", int(s["recipients"]), int(s["writes"]))
             for s in rep.first_steps().to_dict("records")]
    return DemoResult(summaries, end, files, stats, steps)


def _print_round(i: int, summary: RunSummary) -> None:
    totals = summary.outcome_totals()
    new = sum(c.new_events for c in summary.campaigns)
    q = sum(c.quarantined for c in summary.campaigns)
    writes = ", ".join(f"{v} {k}" for k, v in sorted(totals.items()) if v) or "none"
    console.print(literal(f"  synced: {new} new events ({q} quarantined); writes: {writes}"
                          + (f"; errors: {'; '.join(map(str, summary.errors))}"
                             if summary.errors else "")))


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
    result = run_demo(out, rounds=rounds, contacts=contacts, seed=seed, faults=faults,
                      say=lambda line: console.print(literal(line)), on_round=_print_round)
    hl = result.stats.get("highlevel", {}).get("total", {})
    console.print(f"HighLevel saw {hl.get('requests', 0)} requests, "
                  f"{hl.get('rate_limited', 0)} over its rate limit, faults injected: "
                  f"{hl.get('faults', {})}.")
    if result.problems:
        console.print("Do this first (the report groups every problem by recipient):")
    for action, recipients, writes in result.problems:
        console.print(literal(f"  {action} ({recipients} recipient(s), {writes} write(s))"))
    for path in result.report_files:
        console.print(literal(f"Report: {path}"))
    if result.end.exact:
        console.print(Text.assemble(("End state matches Postalytics' ground truth", "green"),
                                    ": ", literal(result.end.describe())))
    else:
        say_error(result.end.describe(), label="End state differs")
        raise typer.Exit(ExitCode.partial)


def register(app: typer.Typer) -> None:
    """Add `demo` to the app."""
    app.command("demo")(demo_cmd)
