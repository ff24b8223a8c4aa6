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
