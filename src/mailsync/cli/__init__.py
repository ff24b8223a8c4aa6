"""The `mailsync` command line: one module per command group, assembled in `main`."""

from mailsync.cli.main import app, main

__all__ = ["app", "main"]
