"""Helpers for tests that sync against the in-process sandbox."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailsync.cli.demo import end_state, write_sandbox_config
from mailsync.clients.ratelimit import forget_pacers
from mailsync.config import Settings, load_settings
from mailsync.sandbox.server import SandboxServer
from mailsync.sync.context import SyncContext
from mailsync.sync.runner import RunSummary, run_sync


@dataclass
class Rig:
    """A sandbox, a config for it, and a context to sync with."""

    sb: SandboxServer
    config: Path
    env: dict[str, str]
    settings: Settings
    ctx: SyncContext

    def sync(self, **kw: Any) -> RunSummary:
        return asyncio.run(run_sync(self.ctx, **kw))

    def end(self):  # type: ignore[no-untyped-def]
        return end_state(self.sb, self.settings)

    def cli(self, *args: str, extra_env: Mapping[str, str] | None = None,
            timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run `mailsync ...` in a child process with this rig's config and secrets."""
        env = {**os.environ, **self.env, "MAILSYNC_CONFIG": str(self.config),
               **(extra_env or {})}
        return subprocess.run([sys.executable, "-m", "mailsync", *args], env=env, text=True,
                              capture_output=True, timeout=timeout, cwd=cwd)

    def spawn(self, *args: str, extra_env: Mapping[str, str] | None = None
              ) -> subprocess.Popen[str]:
        env = {**os.environ, **self.env, "MAILSYNC_CONFIG": str(self.config),
               **(extra_env or {})}
        return subprocess.Popen([sys.executable, "-m", "mailsync", *args], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@contextmanager
def rig(tmp_path: Path, db_url: str | None = None, *, seed: int = 3, contacts: int = 40,
        time_scale: float = 0.05, messy: bool = False, timeout: float = 2.0,
        campaigns: Mapping[str, Mapping[str, Any]] | None = None,
        **sandbox_options: Any) -> Iterator[Rig]:
    """Start a sandbox and a store, with the secrets in this process's environment; extra
    keyword options are SandboxConfig fields."""
    db_url = db_url or f"sqlite:///{tmp_path / 'mailsync.db'}"
    forget_pacers()  # seeded sandboxes reuse location ids; a new world starts with fresh ones
    with SandboxServer(seed=seed, contacts=contacts, time_scale=time_scale, messy=messy,
                       **sandbox_options) as sb:
        path, env = write_sandbox_config(sb.manifest(), tmp_path, db_url, campaigns=campaigns)
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            settings = load_settings(path)
            yield Rig(sb, path, env, settings, SyncContext(settings, timeout=timeout))
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
