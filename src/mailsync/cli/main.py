"""The `mailsync` app: logging set-up, and every command group registered in help order."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.logging import RichHandler

from mailsync.cli import demo, report, settle, sync, webhook
from mailsync.cli.config import config_app
from mailsync.cli.db import db_app
from mailsync.cli.options import err_console
from mailsync.redact import install_log_redaction
from mailsync.sandbox.cli import sandbox_app

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Bring Postalytics direct-mail events into HighLevel contacts.")


@app.callback()
def _main(verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Log every retry and request outcome.")] = False) -> None:
    """Bring Postalytics direct-mail events into HighLevel contacts."""
    install_log_redaction()
    handler = RichHandler(console=err_console, show_path=False, markup=False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(message)s", handlers=[handler], force=True)
    if not verbose:  # httpx logs every request at INFO
        logging.getLogger("httpx").setLevel(logging.WARNING)


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
