"""Secrets for flow runs: Prefect Secret blocks first, environment variables as the fallback.

This lives in `tasks/` because `src/mailsync/` never imports Prefect.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from mailsync.config import ConfigError, SecretRef, SecretResolver, env_resolver
from mailsync.redact import register_secret

log = logging.getLogger("mailsync.secrets")


def _load_block(name: str) -> str:
    from prefect.blocks.system import Secret

    # `_sync=True`: the resolver is called from inside the library's event loop, where
    # Prefect's async dispatch would otherwise hand back an un-awaited coroutine.
    value = Secret.load(name, _sync=True).get()  # type: ignore[call-arg]
    return value if isinstance(value, str) else str(value)


def prefect_secret_resolver(environ: Mapping[str, str] | None = None) -> SecretResolver:
    """Resolve a SecretRef from its Prefect Secret block, else from its environment variable.

    Values are cached for the resolver's lifetime (one task run), so a location's token is
    read from the Prefect API once, not per HTTP call. Errors name the block or variable,
    never a value.
    """
    from_env = env_resolver(environ)
    cache: dict[SecretRef, str] = {}
    lock = threading.Lock()

    def resolve(ref: SecretRef) -> str:
        with lock:
            if ref in cache:
                return cache[ref]
        value: str | None = None
        if ref.secret:
            try:
                value = _load_block(ref.secret)
            except Exception as exc:  # missing block, no API: try the env var before failing
                if not ref.env:
                    raise ConfigError(
                        f"{ref.describe()} could not be read ({type(exc).__name__})") from None
                log.warning("Prefect Secret block %r could not be read (%s); using env %s",
                            ref.secret, type(exc).__name__, ref.env)
        if value is None:
            value = from_env(SecretRef(env=ref.env) if ref.env else ref)
        # Registered so that any log line or artifact text that echoes it is masked.
        register_secret(value)
        with lock:
            cache[ref] = value
        return value

    return resolve
