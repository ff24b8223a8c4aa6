"""`mailsync settle`: after restoring an older backup, learn which notes HighLevel already has."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Table

from mailsync.cli.options import (
    CampaignOpt,
    ConfigOpt,
    ExitCode,
    console,
    friendly_errors,
    literal,
    location_label,
    open_context,
)
from mailsync.config import Settings
from mailsync.sync.settle import SettleResult, run_settle

LocationOpt = Annotated[
    list[str] | None,
    typer.Option("--location", help="Only this location id (repeatable)."),
]


def _table(results: list[SettleResult], settings: Settings) -> Table:
    table = Table(title="contacts settled against HighLevel")
    for col in ("location", "contacts read", "notes already there", "could not read"):
        table.add_column(col, justify="left" if col == "location" else "right")
    for r in results:
        label = location_label(settings, r.location_id)
        if r.lease_held_elsewhere:
            label += ": another worker holds the lease, try again"
        table.add_row(literal(label), str(r.contacts_read), str(r.notes_found),
                      str(len(r.unreadable)))
    return table


@friendly_errors
def settle_cmd(config: ConfigOpt = None, location: LocationOpt = None,
               campaign: CampaignOpt = None) -> None:
    """Read every contact's notes again and mark done the planned notes already there.

    Run it once after restoring the store from an older backup, before the next sync.
    """
    ctx = open_context(config)
    results = asyncio.run(run_settle(ctx, location_ids=location, drop_ids=campaign))
    console.print(_table(results, ctx.settings))
    if any(r.lease_held_elsewhere or r.unreadable for r in results):
        console.print("Contacts not read now are read before their next note is sent.")
        raise typer.Exit(ExitCode.partial)


def register(app: typer.Typer) -> None:
    """Add `settle` to the app."""
    app.command("settle")(settle_cmd)
