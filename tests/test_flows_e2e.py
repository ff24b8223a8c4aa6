"""End to end through Prefect: a real server, prefect.yaml deployed to a process pool, a
worker, a sandbox, and runs triggered through the API as the UI's Run button does."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
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

from mailsync.cli.demo import end_state, write_sandbox_config
from mailsync.config import load_settings
from mailsync.sandbox.server import SandboxServer

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

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


def test_secret_resolver_reads_a_saved_block(prefect_server: PrefectServer) -> None:
    from prefect.blocks.system import Secret

    from mailsync.config import ConfigError, SecretRef
    from tasks.secrets import prefect_secret_resolver

    with api(prefect_server):
        Secret(value="s3cr3t-from-block").save("mailsync-e2e-resolver", overwrite=True)
        resolve = prefect_secret_resolver({"FALLBACK": "from-env-value"})
        assert resolve(SecretRef(secret="mailsync-e2e-resolver")) == "s3cr3t-from-block"
        # A block wins over the env var; a missing block falls back to it.
        assert resolve(SecretRef(secret="mailsync-e2e-resolver", env="FALLBACK")) \
            == "s3cr3t-from-block"
        assert resolve(SecretRef(secret="no-such-block", env="FALLBACK")) == "from-env-value"
        with pytest.raises(ConfigError) as err:
            resolve(SecretRef(secret="no-such-block"))
        assert "no-such-block" in str(err.value)


def test_deployments_from_prefect_yaml(prefect_server: PrefectServer,
                                       deployed: dict[str, Any]) -> None:
    from prefect import get_client

    async def read() -> dict[str, Any]:
        async with get_client() as client:
            return {d.name: d for d in await client.read_deployments()}

    with api(prefect_server):
        deps = asyncio.run(read())
    assert {"mailsync-sync", "mailsync-reconcile", "mailsync-replay"} <= set(deps)
    sync = deps["mailsync-sync"]
    assert sync.work_pool_name == POOL
    assert [s.schedule.interval.total_seconds() for s in sync.schedules] == [900]
    assert sync.global_concurrency_limit is not None and sync.global_concurrency_limit.limit == 1
    assert sync.concurrency_options.collision_strategy == "CANCEL_NEW"
    cron = deps["mailsync-reconcile"].schedules[0].schedule
    assert (cron.cron, cron.timezone) == ("0 6 * * *", "America/Toronto")
    assert deps["mailsync-replay"].schedules == []
    # The UI's custom-run form: every parameter has a description.
    props = sync.parameter_openapi_schema["properties"]
    assert {"campaigns", "dry_run", "lookback_hours", "max_pages", "config_path"} <= set(props)
    assert all(p.get("description") for p in props.values())
    pull = json.dumps(sync.pull_steps)
    assert str(ROOT) in pull and "set_working_directory" in pull


def test_sync_through_a_worker(prefect_server: PrefectServer, deployed: dict[str, Any]) -> None:
    sb: SandboxServer = deployed["sb"]
    settings = load_settings(deployed["config"], environ={})
    t0 = time.monotonic()
    fr = run(prefect_server, "sync-campaigns/mailsync-sync", {"max_pages": 50})
    took = time.monotonic() - t0
    worker_log = deployed["worker_log"].read_text(errors="replace")
    assert fr.state.is_completed(), f"{fr.state}\n{worker_log[-4000:]}"
    end = end_state(sb, settings)
    assert end.exact, end.describe()

    with api(prefect_server):
        arts = asyncio.run(flow_run_artifacts(fr.id))
    by_key = {a.key: a for a in arts if a.key}
    assert {"mailsync-sync-summary", "mailsync-sync-problems",
            "mailsync-sync-problem-writes"} <= set(by_key), sorted(by_key)
    # The run's report belongs to the flow run, not to one of its task runs.
    assert all(a.task_run_id is None for a in by_key.values()
               if not a.key.startswith("mailsync-progress-")), sorted(by_key)
    progress = [a for a in arts if a.type == "progress"]
    assert len(progress) == len(settings.locations)
    assert all(a.key.startswith("mailsync-progress-") and a.data == 100.0 for a in progress)
    assert all(re.fullmatch(r"[a-z0-9-]+", a.key or "") for a in arts)
    summary = by_key["mailsync-sync-summary"].data
    assert "## Writes by location" in summary and "mailsync sync" in summary
    groups = by_key["mailsync-sync-problems"].data
    groups = json.loads(groups) if isinstance(groups, str) else groups
    # Recipients without a HighLevel contact: one row each, all their writes counted there.
    # (Cells are markdown-escaped for the UI: `no\_contact` shows as no_contact.)
    assert groups and all(r["problem"].replace("\\", "") == "no_contact" for r in groups)
    assert all(r["writes"] >= 2 for r in groups)  # a tag and a note at least
    # No secret in any artifact: the Secret block's key, tokens, OAuth values.
    blob = json.dumps([a.data for a in arts], default=str)
    for value in [deployed["manifest"]["postalytics_api_key"], *deployed["secrets"].values()]:
        assert value not in blob
    print(f"\ndeploy {deployed['deploy_seconds']:.1f}s, sync run {took:.1f}s: "
          f"{end.describe()}")


def test_reconcile_and_replay_through_a_worker(prefect_server: PrefectServer,
                                               deployed: dict[str, Any]) -> None:
    sb: SandboxServer = deployed["sb"]
    settings = load_settings(deployed["config"], environ={})
    t0 = time.monotonic()
    fr = run(prefect_server, "reconcile/mailsync-reconcile", {"verify": True})
    assert fr.state.is_completed(), str(fr.state)
    with api(prefect_server):
        arts = {a.key: a for a in asyncio.run(flow_run_artifacts(fr.id))}
    assert {"mailsync-reconcile-summary", "mailsync-reconcile-problems",
            "mailsync-reconcile-problem-writes"} <= set(arts)
    summary = arts["mailsync-reconcile-summary"].data
    assert "## Verify" in summary and " 0 done writes drifted" in summary, summary

    fr = run(prefect_server, "replay/mailsync-replay", {"statuses": ["rejected"]})
    assert fr.state.is_completed(), str(fr.state)
    with api(prefect_server):
        arts = {a.key: a for a in asyncio.run(flow_run_artifacts(fr.id))}
    assert "mailsync-replay-summary" in arts
    assert end_state(sb, settings).exact
    print(f"\nreconcile + replay {time.monotonic() - t0:.1f}s")


def test_pool_script_is_idempotent(prefect_server: PrefectServer,
                                   deployed: dict[str, Any]) -> None:
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    out = subprocess.run([str(ROOT / "deployments" / "pool.sh")], cwd=ROOT,
                         env=prefect_server.env(PREFECT=str(BIN / "prefect")),
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
