"""Building a SyncContext inside a task run, from the config path the flow was given."""

from __future__ import annotations

import os

from mailsync.config import load_settings
from mailsync.redact import install_log_redaction
from mailsync.sync.context import SyncContext
from tasks.secrets import prefect_secret_resolver

HTTP_TIMEOUT = float(os.environ.get("MAILSYNC_HTTP_TIMEOUT", "30"))


def build_context(config_path: str | None) -> SyncContext:
    """Settings from `config_path` (else $MAILSYNC_CONFIG), secrets from blocks or env.

    Each task builds its own: settings are cheap to read and the store's engine is shared
    per URL by the library, so nothing heavy is created per task.
    """
    # Prefect ships task logs to its API: mask any secret before a record leaves the process.
    install_log_redaction()
    settings = load_settings(config_path or None)
    return SyncContext(settings, resolve_secret=prefect_secret_resolver(),
                       timeout=HTTP_TIMEOUT)
