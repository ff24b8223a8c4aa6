"""`mailsync db ...`: the database's schema."""

from __future__ import annotations

import typer

from mailsync.cli.options import ConfigOpt, console, friendly_errors, literal, settings_from
from mailsync.store.engine import head_revision, store_identity, upgrade_database

db_app = typer.Typer(no_args_is_help=True, help="The mailsync database.")


@db_app.command("upgrade")
@friendly_errors
def db_upgrade(config: ConfigOpt = None) -> None:
    """Create or migrate the database's tables to this version (a no-op when current)."""
    settings = settings_from(config)
    url = settings.database.url
    before, after = upgrade_database(url)
    where = store_identity(url).describe()
    if before == after:
        console.print(literal(f"{where}: already at revision {after}; nothing to do."),
                      soft_wrap=True)
    else:
        console.print(literal(f"{where}: upgraded from {before or 'empty'} to {after}."),
                      soft_wrap=True)


@db_app.command("revision")
def db_revision() -> None:
    """Print the newest schema revision this version ships."""
    console.print(head_revision())
