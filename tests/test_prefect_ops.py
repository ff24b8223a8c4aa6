"""docs/prefect.md's settings for months of service: real Prefect settings, and the auth works."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def documented_env() -> dict[str, str]:
    """Every `export NAME=value` in the "Running it for months" section."""
    text = (ROOT / "docs" / "prefect.md").read_text()
    section = text.split("## Running it for months", 1)[1].split("\n## ", 1)[0]
    env = {}
    for name, value in re.findall(r"^export (PREFECT_\w+)=(.*?)(?:\s+#.*)?$", section, re.M):
        env[name] = shlex.split(value)[0]
    return env


def test_the_documented_retention_and_auth_are_prefect_settings(monkeypatch):
    from prefect.settings import Settings

    env = documented_env()
    assert {"PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED", "PREFECT_SERVER_API_AUTH_STRING",
            "PREFECT_API_AUTH_STRING"} <= set(env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    vacuum = settings.server.services.db_vacuum
    assert {"events", "flow_runs"} <= set(vacuum.enabled)
    assert vacuum.retention_period == timedelta(days=14)
    assert settings.server.events.retention_period == timedelta(days=7)
    assert settings.server.api.auth_string is not None
    assert settings.api.auth_string is not None


@pytest.mark.slow
def test_a_server_with_the_documented_auth_refuses_anyone_without_it(tmp_path):
    port = free_port()
    auth = "mailsync-admin:s3cret-for-this-test"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", PREFECT_UI_ENABLED="false",
               PREFECT_SERVER_API_AUTH_STRING=auth)
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/health", auth=tuple(auth.split(":")), timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.5)
        assert httpx.post(f"{url}/deployments/filter", json={}).status_code == 401
        cli_env = {**env, "PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": auth}
        cli_env.pop("PREFECT_SERVER_API_AUTH_STRING")
        listed = subprocess.run([str(BIN / "prefect"), "deployment", "ls"], env=cli_env,
                                capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0, listed.stderr
        refused = subprocess.run([str(BIN / "prefect"), "deployment", "ls"],
                                 env={**cli_env, "PREFECT_API_AUTH_STRING": "x:wrong"},
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def free_port() -> int:
    """A free loopback port (closed again before the server binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
