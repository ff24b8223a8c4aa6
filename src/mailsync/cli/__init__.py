"""The `mailsync` command line: one module per command group, assembled in `main`."""

import signal
import sys


def _quiet_interrupt(_signum: int, _frame: object) -> None:
    # Ctrl-C while the command is still importing (a second or so): end with the shell's
    # code for it, without a KeyboardInterrupt traceback. The app's callback restores the
    # default handler just before the command runs, where every command ends it in one line.
    raise SystemExit(130)


if signal.getsignal(signal.SIGINT) is signal.default_int_handler and "pytest" not in sys.modules:
    signal.signal(signal.SIGINT, _quiet_interrupt)

from mailsync.cli.main import app, main  # noqa: E402 - after the start-up Ctrl-C handler

__all__ = ["app", "main"]
