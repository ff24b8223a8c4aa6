"""`mailsync config check`: validate a config file and say what it found."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from mailsync.cli.options import ConfigOpt, console, friendly_errors, settings_from
from mailsync.codes import MAIL_CODES
from mailsync.config import Settings
from mailsync.store.engine import existing_identity, safe_url

config_app = typer.Typer(no_args_is_help=True, help="The configuration file.")


def _locations_table(settings: Settings) -> Table:
    table = Table(title=f"{len(settings.locations)} location(s)")
    for col in ("location", "auth", "credentials from"):
        table.add_column(col)
    for loc in settings.locations:
        if loc.oauth:
            table.add_row(loc.id, "OAuth", loc.oauth.ref("refresh_token").describe())
        else:
            assert loc.token is not None
            table.add_row(loc.id, "Private Integration Token", loc.token.describe())
    return table


def _campaigns_table(settings: Settings) -> Table:
    table = Table(title=f"{len(settings.campaigns)} campaign(s)")
    for col in ("drop id", "location", "country", "codes written", "contact id field"):
        table.add_column(col)
    for camp in settings.campaigns:
        codes = [c.value for c in MAIL_CODES if c in camp.selected_codes]
        table.add_row(camp.drop_id, camp.location, camp.country, ", ".join(codes),
                      camp.contact_id_field or "(match by email, phone)")
    return table


@config_app.command("check")
@friendly_errors
def config_check(config: ConfigOpt = None) -> None:
    """Validate a config file and say what it found."""
    settings = settings_from(config)
    pa = settings.postalytics
    console.print(f"[bold]{settings.source}[/bold] is valid.")
    found = existing_identity(settings.database.url)
    console.print(f"Store: {escape(found.describe())}" if found else
                  f"Store: {escape(safe_url(settings.database.url))} (not created yet: the "
                  "first sync or `mailsync db upgrade` creates it)", soft_wrap=True)
    console.print(f"Postalytics account {pa.account!r} at {pa.base_url}, "
                  f"API key from {pa.api_key.describe()}")
    console.print(f"HighLevel at {settings.highlevel.base_url}")
    console.print(_locations_table(settings))
    console.print(_campaigns_table(settings))
