"""The `mailsync` command line."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mailsync.codes import MAIL_CODES
from mailsync.config import ConfigError, Settings, load_settings
from mailsync.store.engine import head_revision, safe_url, upgrade_database

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
    typer.Option("--config", "-c", help="Config file [default: $MAILSYNC_CONFIG, mailsync.toml]"),
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


def _mount_optional() -> None:
    # The sandbox sub-app lives with the sandbox; import lazily so `--help` stays fast.
    from mailsync.sandbox.cli import sandbox_app

    app.add_typer(sandbox_app, name="sandbox", help="Both APIs simulated over real HTTP.")


with contextlib.suppress(ModuleNotFoundError):  # TODO(sandbox): drop once it lands
    _mount_optional()


def main() -> None:
    """Entry point for `python -m mailsync`."""
    app(prog_name="mailsync")


if __name__ == "__main__":
    sys.exit(main())
