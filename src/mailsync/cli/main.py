"""The `mailsync` app: logging set-up, and every command group registered in help order."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Annotated, Any

import typer
from rich.logging import RichHandler
from typer.core import TyperGroup

from mailsync.cli import demo, report, settle, sync, webhook
from mailsync.cli.config import config_app
from mailsync.cli.db import db_app
from mailsync.cli.options import err_console, set_debug, visible
from mailsync.redact import install_log_redaction
from mailsync.sandbox.cli import sandbox_app


class _LiteralHandler(RichHandler):
    """Log lines as plain text: never markup (`markup=False`), and control characters that
    arrived in outside data shown as escapes rather than sent to the terminal."""

    def render_message(self, record: logging.LogRecord, message: str) -> Any:
        return super().render_message(record, visible(message, keep_lines=True))


def _hide_flag_types(command: Any) -> None:
    """No `<bool>` beside flags that take no value (`--dry-run`, `--help`): Typer's rich help
    shows an option's type unless it has a metavar, so flags get an empty one."""
    ctx = typer.Context(command, info_name=command.name)
    for param in command.get_params(ctx):  # includes the --help option Typer adds
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _hide_flag_types(sub)


class MailsyncApp(typer.Typer):
    """The Typer app, tidied once before it runs: flags without a type in help."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        command = typer.main.get_command(self)
        _hide_flag_types(command)
        return command(*args, **kwargs)


app = MailsyncApp(no_args_is_help=True, add_completion=False, cls=TyperGroup,
                  pretty_exceptions_enable=False,
                  help="Bring Postalytics direct-mail events into HighLevel contacts.")


def _interrupt_from_here() -> None:
    """Start-up is over (imports, building the command, parsing it: see `mailsync.cli`):
    Ctrl-C raises KeyboardInterrupt again, which every command turns into one line and exit
    code 130. Unless the command was started with SIGINT ignored (a shell script's `mailsync
    sync &`): then it stays ignored throughout, as Unix programs leave it."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Log every retry and request outcome.")] = False,
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show the traceback of a failure (also MAILSYNC_DEBUG=1).")] = False,
) -> None:
    """Bring Postalytics direct-mail events into HighLevel contacts."""
    _interrupt_from_here()
    install_log_redaction()
    set_debug(debug)
    handler = _LiteralHandler(console=err_console, show_path=False, markup=False)
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler],
                        force=True)
    # Our own loggers at the chosen level; libraries stay at warnings (httpx logs every
    # request at INFO, SQLAlchemy and Alembic much more at DEBUG).
    logging.getLogger("mailsync").setLevel(level)


# Commands first (sync, replay, demo, report, verify), then the groups: the order of --help.
sync.register(app)
demo.register(app)
report.register(app)
settle.register(app)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(sandbox_app, name="sandbox", help="Both APIs simulated over real HTTP.")
webhook.register(app)


def main() -> None:
    """Entry point for `python -m mailsync`."""
    app(prog_name="mailsync")


if __name__ == "__main__":
    sys.exit(main())
