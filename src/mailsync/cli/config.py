"""`mailsync config check`: validate a config file, prove its secrets are set, and with
`--online` that the store and both APIs accept what it names."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from mailsync.cli.checks import Check, Verdict, online_checks, secret_checks, store_check
from mailsync.cli.options import (
    ConfigOpt,
    ExitCode,
    console,
    friendly_errors,
    labelled,
    literal,
    settings_from,
)
from mailsync.codes import MAIL_CODES
from mailsync.config import Settings
from mailsync.sync.failures import FailureKind

config_app = typer.Typer(no_args_is_help=True, help="The configuration file.")

_STYLE = {Verdict.ok: "green", Verdict.warning: "yellow", Verdict.failed: "red",
          Verdict.skipped: "dim"}
_EXIT_ORDER = ((FailureKind.config, ExitCode.bad_input), (FailureKind.store, ExitCode.store),
               (FailureKind.remote, ExitCode.remote))


def _locations_table(settings: Settings) -> Table:
    table = Table(title=f"{len(settings.locations)} location(s)")
    for col in ("location", "auth", "credentials from"):
        table.add_column(col)
    for loc in settings.locations:
        name = literal(labelled(loc.name, loc.id))
        if loc.oauth:
            table.add_row(name, "OAuth", literal(loc.oauth.ref("refresh_token").describe()))
        else:
            assert loc.token is not None
            table.add_row(name, "Private Integration Token", literal(loc.token.describe()))
    return table


def _campaigns_table(settings: Settings) -> Table:
    table = Table(title=f"{len(settings.campaigns)} campaign(s)")
    for col in ("campaign", "location", "country", "codes written", "contact id field"):
        table.add_column(col)
    names = {loc.id: loc.name for loc in settings.locations}
    for camp in settings.campaigns:
        codes = [c.value for c in MAIL_CODES if c in camp.selected_codes]
        table.add_row(literal(labelled(camp.name, camp.drop_id)),
                      literal(labelled(names.get(camp.location), camp.location)), camp.country,
                      ", ".join(codes), camp.contact_id_field or "(match by email, phone)")
    return table


def _checks_table(checks: list[Check], online: bool) -> Table:
    table = Table(title="checks" + ("" if online else " (add --online to try the store and "
                                    "the credentials)"))
    for col in ("check", "result", "detail"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(literal(c.what), Text(c.verdict.value, style=_STYLE[c.verdict]),
                      literal(c.detail))
    return table


def checks_exit_code(checks: list[Check]) -> ExitCode:
    """0 when nothing failed; else the code of the kind to fix first: the config, then the
    store, then the remote APIs."""
    kinds = {c.kind for c in checks if c.verdict is Verdict.failed}
    for kind, code in _EXIT_ORDER:
        if kind in kinds:
            return code
    return ExitCode.ok


@config_app.command("check")
@friendly_errors
def config_check(
    config: ConfigOpt = None,
    online: Annotated[bool, typer.Option(
        "--online", help="Also open the store (schema version) and make one cheap read per "
                         "campaign (Postalytics key) and per location (its token).")] = False,
) -> None:
    """Validate a config file, check that every secret it names is set, say what it found.

    With --online: the store's schema, and each credential proven by one read.
    """
    settings = settings_from(config)
    pa = settings.postalytics
    console.print(Text.assemble(literal(settings.source, style="bold"), " is valid TOML and "
                                "a valid mailsync configuration."))
    console.print(literal(f"Postalytics account {pa.account!r} at {pa.base_url}; HighLevel at "
                          f"{settings.highlevel.base_url}"), soft_wrap=True)
    console.print(_locations_table(settings))
    console.print(_campaigns_table(settings))
    store = store_check(settings, online=online)
    console.print(Text.assemble("Store: ", Text(store.verdict.value, style=_STYLE[
        store.verdict]), ": ", literal(store.detail)), soft_wrap=True)
    checks = list(secret_checks(settings, dict(os.environ)))
    if online:
        checks += online_checks(settings, store)
    console.print(_checks_table(checks, online))
    code = checks_exit_code([store, *checks])
    if code != ExitCode.ok:
        failed = sum(c.verdict is Verdict.failed for c in [store, *checks])
        console.print(Text(f"{failed} check(s) failed: see the table above.", style="red"))
        raise typer.Exit(code)
