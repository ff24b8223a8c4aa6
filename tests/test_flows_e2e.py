"""End to end through Prefect: a real server, prefect.yaml deployed to a process pool, a
worker, a sandbox, and runs triggered through the API as the UI's Run button does."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from typing import Any

import pytest

from mailsync.cli.demo import end_state
from mailsync.config import load_settings
from mailsync.sandbox.server import SandboxServer
from tests.prefect_server import (
    BIN,
    POOL,
    ROOT,
    PrefectServer,
    api,
    flow_run_artifacts,
    run,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]



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
