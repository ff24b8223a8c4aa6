"""What every `mailsync` command shares: consoles, options, names, and the one place where
expected failures become one line and an exit code.

Outside data (anything Postalytics, HighLevel or a config file said) is printed through
`literal`: a Rich `Text` that is never read as markup, with control characters shown as
escapes, so `[/bold]` or an ANSI sequence in a name is shown, never obeyed.
"""

from __future__ import annotations

import os
import re
import traceback
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from mailsync.config import ConfigError, Settings, load_settings
from mailsync.store.engine import store_identity
from mailsync.sync.context import SyncContext
from mailsync.sync.failures import FailureKind, describe_failure, unexpected_line

console = Console()
err_console = Console(stderr=True)


class ExitCode(IntEnum):
    """What a command's exit status means (documented in the README)."""

    ok = 0
    partial = 1
    """The command ran, but some campaigns, locations or writes did not get through."""
    bad_input = 2
    """The config file, a secret it names, or the command's options."""
    store = 3
    """The database could not be used (unreachable, refused, read-only, full, schema)."""
    remote = 4
    """Postalytics or HighLevel could not be reached, or refused the credentials."""
    drift = 5
    """`verify`: writes we made are missing in HighLevel."""
    unchecked = 6
    """`verify`: some contacts could not be checked (and no drift was found in the rest)."""
    internal = 70
    """An unexpected error (a bug): `--debug` shows its traceback."""
    interrupted = 130


_EXIT_FOR = {FailureKind.config: ExitCode.bad_input, FailureKind.store: ExitCode.store,
             FailureKind.remote: ExitCode.remote}

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $MAILSYNC_CONFIG or mailsync.toml)"),
]
CampaignOpt = Annotated[
    list[str] | None,
    typer.Option("--campaign", help="Only this drop id (repeatable)."),
]
SINCE_HELP = "24h, 7d, 90m ago, or a date/time such as 2026-11-20T08:00 (UTC)"
F = TypeVar("F", bound=Callable[..., Any])


# -- outside data is data ---------------------------------------------------------------------

# Every control or invisible formatting character (C0, DEL, C1, zero-width, bidi overrides):
# a terminal would act on them (move the cursor, recolour, reorder the line).
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e"
                       r"\u2060-\u2064\u2066-\u2069\ufeff]")


def visible(value: object, *, keep_lines: bool = False) -> str:
    """`value` as text with every control character written as an escape (`\\x1b`); with
    `keep_lines`, newlines and tabs stay (a traceback, several lines of our own)."""
    text = "" if value is None else str(value)

    def shown(m: re.Match[str]) -> str:
        char = m.group()
        if keep_lines and char in "\n\t":
            return char
        return char.encode("unicode_escape").decode("ascii")

    return _CONTROLS.sub(shown, text)


def literal(value: object, style: str = "") -> Text:
    """Outside data for the terminal: never markup, control characters shown, not obeyed."""
    return Text(visible(value), style=style)


def markup_safe(value: object) -> str:
    """Outside data to splice into a markup string: markup escaped, controls shown."""
    return escape(visible(value))


def lines(*parts: object, sep: str = "\n") -> Text:
    """Several values in one cell, each `literal`, joined by `sep` (a newline by default)."""
    return Text(sep).join(literal(p) for p in parts if p not in (None, ""))


def say_error(line: object, label: str = "error", style: str = "red") -> None:
    """`error: <line>` on stderr, the line shown literally."""
    err_console.print(Text.assemble((f"{label}: ", style), literal(line)), soft_wrap=True,
                      highlight=False)


# -- names ------------------------------------------------------------------------------------

def labelled(name: str | None, ident: str) -> str:
    """`Boston office (loc-123)`, or the id alone when there is no name."""
    return f"{name} ({ident})" if name and name != ident else ident


def location_label(settings: Settings, location_id: str) -> str:
    """A location by its configured name, with its id."""
    try:
        return labelled(settings.location(location_id).name, location_id)
    except KeyError:
        return location_id


def campaign_label(settings: Settings, drop_id: str) -> str:
    """A campaign by its configured name, with its drop id."""
    for camp in settings.campaigns:
        if camp.drop_id == drop_id:
            return labelled(camp.name, drop_id)
    return drop_id


def labels(settings: Settings, scope: str, targets: Iterable[str]) -> str:
    """`campaigns Fall US (1), Fall CA (2)` / `location Boston (loc-1)` for error lines."""
    ids = list(targets)
    name = campaign_label if scope == "campaign" else location_label
    plural = "s" if len(ids) > 1 else ""
    return f"{scope}{plural} " + ", ".join(name(settings, t) for t in ids)


# -- one syntax for times ---------------------------------------------------------------------

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


# -- failures ---------------------------------------------------------------------------------

_debug = False


def set_debug(on: bool) -> None:
    """Show tracebacks of failures (`--debug`, or MAILSYNC_DEBUG=1)."""
    global _debug
    _debug = on


def debug_enabled() -> bool:
    """Whether tracebacks are shown: `--debug` or MAILSYNC_DEBUG set to a true value."""
    return _debug or os.environ.get("MAILSYNC_DEBUG", "").strip().lower() in (
        "1", "true", "yes", "on")


def fail(exc: BaseException) -> ExitCode:
    """Say why a command failed, in one line on stderr (and the traceback with --debug);
    returns the exit code that failure means."""
    if debug_enabled():
        trace = "".join(traceback.format_exception(exc)).rstrip()
        err_console.print(Text(visible(trace, keep_lines=True)), highlight=False,
                          soft_wrap=True)
    failure = describe_failure(exc)
    if failure is None:
        say_error(unexpected_line(exc))
        return ExitCode.internal
    say_error(failure.line)
    return _EXIT_FOR[failure.kind]


def friendly_errors(func: F) -> F:
    """Expected failures become one line on stderr and their exit code, never a traceback;
    Ctrl-C ends the command quietly."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            say_error("stopped by Ctrl-C: the next run resumes where this one stopped",
                      label="interrupted", style="yellow")
            raise typer.Exit(ExitCode.interrupted) from None
        except Exception as exc:
            raise typer.Exit(fail(exc)) from None

    return wrapper  # type: ignore[return-value]


# -- the store --------------------------------------------------------------------------------

def settings_from(config: Path | None) -> Settings:
    """Load the settings for a command."""
    return load_settings(config)


def announce_store(url: str) -> None:
    """Say on stderr which store this command opened: its URL and the id created with it."""
    err_console.print(Text.assemble("store: ", literal(store_identity(url).describe())),
                      highlight=False, soft_wrap=True)


def open_context(config: Path | None) -> SyncContext:
    """The settings and store a command works with, saying which store it opened."""
    ctx = SyncContext(settings_from(config))
    announce_store(ctx.settings.database.url)
    return ctx
