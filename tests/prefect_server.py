"""A real Prefect server for end-to-end tests: a pytest plugin (registered in conftest.py),
so a test module asks for `prefect_server` or `deployed` by name and imports only helpers."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailsync.cli.demo import write_sandbox_config
from mailsync.sandbox.server import SandboxServer

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL = "mailsync-pool"
SECRET_BLOCK = "mailsync-e2e-postalytics-key"


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PrefectServer:
    """A standalone `prefect server start` and the environment that points at it."""

    url: str
    home: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a Prefect CLI subprocess talking to this server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(self.home), PREFECT_API_URL=self.url,
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
                   PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5",
                   # This checkout's code, whatever the virtualenv has installed.
                   PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
                   PATH=f"{BIN}:{os.environ.get('PATH', '')}")
        env.update(extra)
        return env

    def cli(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `prefect ...` against this server; fail the test with its output on error."""
        out = subprocess.run([str(BIN / "prefect"), *args], cwd=ROOT, env=env or self.env(),
                             capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, f"prefect {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
        return out


def start_prefect_server(tmp: Path, ui: bool = False) -> PrefectServer:
    """Start a server on a free loopback port with its own home (SQLite), scheduler off
    (and its web UI only when a test opens its pages).

    The scheduler is off so the 15-minute schedule cannot slip a run in beside the ones a
    test triggers; the schedules themselves are still stored and checked.
    """
    home = tmp / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = tmp / "prefect-server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
               PREFECT_UI_ENABLED="true" if ui else "false",
               PREFECT_UI_API_URL=url)  # the UI's pages call the API on this port
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("prefect server did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.5)
    return PrefectServer(url, home, proc, log)


def stop(proc: subprocess.Popen[Any]) -> None:
    """Stop a subprocess we started (and its children), politely first."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """One standalone Prefect server per test module."""
    server = start_prefect_server(tmp_path_factory.mktemp("prefect"))
    try:
        yield server
    finally:
        stop(server.proc)


def start_worker(server: PrefectServer, log: Path, env: dict[str, str],
                 queue: str | None = None) -> subprocess.Popen[bytes]:
    """`prefect worker start --pool mailsync-pool` in its own process group."""
    args = [str(BIN / "prefect"), "worker", "start", "--pool", POOL]
    if queue:
        args += ["--work-queue", queue]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def api(server: PrefectServer):  # type: ignore[no-untyped-def]
    """Prefect settings pointing this process's client at the server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: server.url})


async def flow_run_artifacts(flow_run_id: Any) -> list[Any]:
    """Every artifact a flow run (or its tasks) created."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        return await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


async def flow_run_logs(flow_run_ids: list[Any]) -> list[str]:
    """Every log message of these flow runs, oldest first."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    out: list[str] = []
    async with get_client() as client:
        offset = 0
        while True:
            page = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)),
                limit=200, offset=offset, sort=LogSort.TIMESTAMP_ASC)
            out += [log.message for log in page]
            if len(page) < 200:
                return out
            offset += 200


def use_secret_block(config: Path, block: str) -> None:
    """Make the config read the Postalytics key from a Prefect Secret block, not an env var."""
    text = config.read_text()
    text = re.sub(r'api_key_env = "[^"]+"', f'api_key_secret = "{block}"', text)
    config.write_text(text)


@pytest.fixture(scope="module")
def deployed(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[str, Any]]:
    """Sandbox up, Secret block saved, pool created and prefect.yaml deployed, worker on."""
    from prefect.blocks.system import Secret

    tmp = tmp_path_factory.mktemp("e2e")
    with SandboxServer(seed=5, contacts=48, time_scale=0.05) as sb:
        sb.advance(96)
        manifest = sb.manifest()
        config, secrets = write_sandbox_config(manifest, tmp, f"sqlite:///{tmp / 'm.db'}")
        use_secret_block(config, SECRET_BLOCK)
        with api(prefect_server):
            Secret(value=manifest["postalytics_api_key"]).save(SECRET_BLOCK, overwrite=True)
        # The Postalytics key lives only in the block: the worker never sees it in its env.
        secrets.pop("MAILSYNC_SANDBOX_POSTALYTICS_KEY")
        t0 = time.monotonic()
        out = subprocess.run([str(ROOT / "deployments" / "pool.sh")], cwd=ROOT,
                             env=prefect_server.env(MAILSYNC_TIMEZONE="America/Toronto",
                                                    PREFECT=str(BIN / "prefect")),
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
        deploy_seconds = time.monotonic() - t0
        worker_env = prefect_server.env(MAILSYNC_CONFIG=str(config), **secrets)
        worker = start_worker(prefect_server, tmp / "worker.log", worker_env)
        try:
            yield {"sb": sb, "config": config, "secrets": secrets, "tmp": tmp,
                   "deploy_seconds": deploy_seconds, "worker_log": tmp / "worker.log",
                   "manifest": manifest}
        finally:
            stop(worker)


def run(server: PrefectServer, name: str, parameters: dict[str, Any],
        timeout: float = 150) -> Any:
    """Trigger a deployment run as the UI's Run button does, and wait for its end."""
    from prefect.deployments import run_deployment

    with api(server):
        return run_deployment(name, parameters=parameters, timeout=timeout, poll_interval=1,
                              as_subflow=False)
