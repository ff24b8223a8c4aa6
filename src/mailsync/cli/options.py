"""What every `mailsync` command shares: the consoles, the common options, error handling."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from mailsync.config import ConfigError, Settings, load_settings
from mailsync.store.engine import store_identity
from mailsync.sync.context import SyncContext

console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $MAILSYNC_CONFIG or mailsync.toml)"),
]
CampaignOpt = Annotated[
    list[str] | None,
    typer.Option("--campaign", help="Only this drop id (repeatable)."),
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


def announce_store(url: str) -> None:
    """Say on stderr which store this command opened: its URL and the id created with it."""
    err_console.print(f"store: {escape(store_identity(url).describe())}", highlight=False,
                      soft_wrap=True)


def open_context(config: Path | None) -> SyncContext:
    """The settings and store a command works with, saying which store it opened."""
    ctx = SyncContext(settings_from(config))
    announce_store(ctx.settings.database.url)
    return ctx
