"""Scale-out on one PostgreSQL store: two Prefect workers never apply a location at once,
and a killed worker's location lease is taken over once it expires."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from mailsync.cli.demo import end_state, write_sandbox_config
from mailsync.config import load_settings
from mailsync.sandbox.server import SandboxServer
from mailsync.store.engine import get_engine
from mailsync.store.leases import lease_holder
from mailsync.sync import runner
from mailsync.sync.apply import Stop
from mailsync.sync.context import SyncContext
from tests.prefect_server import (
    BIN,
    POOL,
    ROOT,
    PrefectServer,
    api,
    start_worker,
    stop,
)

APPLIED = re.compile(r"applied location=(\S+) holder=(\S+) first_write=(\S+) "
                     r"last_write=(\S+) calls=(\d+)")


def _poll_leases(url: str, stop_flag: threading.Event,
                 seen: dict[str, set[str]]) -> None:
    # An independent view from the store: every holder each location's lease row named.
    engine = sa.create_engine(url)
    try:
        while not stop_flag.is_set():
            with engine.connect() as conn:
                for loc, holder in conn.execute(sa.text(
                        "SELECT location_id, holder FROM location_leases")):
                    seen[loc].add(holder)
            time.sleep(0.02)
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.postgres
def test_two_workers_share_four_locations(prefect_server: PrefectServer, pg_url: str,
                                          tmp_path: Path) -> None:
    with SandboxServer(seed=11, contacts=160, time_scale=0.3, campaigns=4, locations=4) as sb:
        sb.advance(96)
        manifest = sb.manifest()
        config, secrets = write_sandbox_config(manifest, tmp_path, pg_url)
        settings = load_settings(config, environ={})
        get_engine(settings.database.url)  # schema up before two processes race to create it
        drops = [c.drop_id for c in settings.campaigns]
        assert len(settings.locations) == 4 and len(drops) == 4

        env = prefect_server.env(PREFECT=str(BIN / "prefect"))
        prefect_server.cli("work-pool", "create", POOL, "--type", "process", "--overwrite",
                           env=env)
        for queue in ("worker-a", "worker-b"):
            prefect_server.cli("work-queue", "create", queue, "--pool", POOL, env=env)
        # A second sync deployment without the one-at-a-time limit: the scale-out pattern of
        # several deployments over overlapping campaign sets (see docs/prefect.md).
        prefect_server.cli("--no-prompt", "deploy", "flows/sync.py:sync_campaigns",
                           "--name", "mailsync-sync-scale", "--pool", POOL, env=env)
        worker_env = prefect_server.env(MAILSYNC_CONFIG=str(config), **secrets)
        workers = [start_worker(prefect_server, tmp_path / f"worker-{q}.log", worker_env, q)
                   for q in ("worker-a", "worker-b")]
        seen: dict[str, set[str]] = defaultdict(set)
        stop_flag = threading.Event()
        poller = threading.Thread(target=_poll_leases,
                                  args=(settings.database.url, stop_flag, seen), daemon=True)
        poller.start()
        try:
            from prefect.deployments import run_deployment

            def trigger(campaigns: list[str], queue: str) -> Any:
                with api(prefect_server):
                    return run_deployment(
                        "sync-campaigns/mailsync-sync-scale", timeout=150, poll_interval=1,
                        as_subflow=False, work_queue_name=queue,
                        parameters={"campaigns": campaigns, "lease_wait_seconds": 90})

            # Overlapping sets: both want locations 2 and 3; 1 and 4 belong to one each.
            runs: dict[str, Any] = {}
            threads = [threading.Thread(target=lambda c=c, q=q: runs.__setitem__(q, trigger(c, q)))
                       for c, q in ((drops[:3], "worker-a"), (drops[1:], "worker-b"))]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            took = time.monotonic() - t0
        finally:
            stop_flag.set()
            poller.join(timeout=5)
            for w in workers:
                stop(w)
        for q, fr in runs.items():
            log = (tmp_path / f"worker-{q}.log").read_text(errors="replace")
            assert fr.state.is_completed(), f"{q}: {fr.state}\n{log[-3000:]}"

        # The workers' own output holds every flow-run process's log lines, complete once the
        # workers stopped (the API gets them in batches, late on a slow machine: a 30 s wait
        # for them once saw one of six lines).
        messages = [line for q in runs
                    for line in (tmp_path / f"worker-{q}.log").read_text(errors="replace")
                    .splitlines()]
        assert sum(bool(APPLIED.search(m)) for m in messages) == 6  # three locations per run
        spans: dict[str, list[tuple[datetime, datetime, str]]] = defaultdict(list)
        holders: dict[str, set[str]] = defaultdict(set)
        for m in messages:
            if (hit := APPLIED.search(m)) is None:
                continue
            loc, holder, first, last, _calls = hit.groups()
            holders[loc].add(holder)
            if first != "-":
                spans[loc].append((datetime.fromisoformat(first), datetime.fromisoformat(last),
                                   holder))
        # Each location was written by one holder at a time: spans of different holders on
        # the same location never overlap (each span lies inside that holder's lease).
        for loc, items in spans.items():
            items.sort()
            for (_a0, a1, ha), (b0, _b1, hb) in itertools.pairwise(items):
                assert ha == hb or a1 < b0, f"{loc}: {ha} and {hb} wrote at the same time"
        # Both workers wrote: the flow-run processes (host:pid) behind the spans are two.
        pids = {h.split(":")[1] for items in spans.values() for *_x, h in items}
        assert len(pids) == 2, spans
        assert set(spans) == {loc.id for loc in settings.locations}
        # The store's lease rows only ever named holders that logged their applies.
        for loc, names in seen.items():
            assert names <= holders[loc], (loc, names, holders[loc])
        end = end_state(sb, settings)
        assert end.exact, end.describe()
        contended = {loc: len({h for *_x, h in items}) for loc, items in spans.items()}
        print(f"\ntwo workers, 4 locations: {took:.1f}s; writers per location {contended}; "
              f"{end.describe()}; rate-limited at HighLevel: "
              f"{sb.stats().get('highlevel', {}).get('total', {}).get('rate_limited')}")


VICTIM = textwrap.dedent("""
    import asyncio, dataclasses, sys
    from datetime import timedelta
    from mailsync.config import load_settings
    from mailsync.sync import runner
    from mailsync.sync.context import SyncContext

    ctx = SyncContext(load_settings(sys.argv[1]), timeout=10)
    opts = dataclasses.replace(runner.apply_options(ctx, holder="victim"),
                               lease_ttl=timedelta(seconds=3))
    asyncio.run(runner.apply(ctx, sys.argv[2], opts))
""")


@pytest.mark.slow
@pytest.mark.postgres
def test_killed_workers_lease_is_taken_over(pg_url: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with SandboxServer(seed=12, contacts=90, time_scale=1.0) as sb:
        sb.advance(96)
        config, secrets = write_sandbox_config(sb.manifest(), tmp_path, pg_url)
        for k, v in secrets.items():
            monkeypatch.setenv(k, v)
        settings = load_settings(config)
        ctx = SyncContext(settings, timeout=10)
        camp = settings.campaigns[0]
        loc = camp.location
        asyncio.run(runner.fetch_and_plan(ctx, camp, runner.start_run(ctx, "sync")))

        victim = subprocess.Popen([sys.executable, "-c", VICTIM, str(config), loc],
                                  env={**os.environ, "PYTHONPATH": str(ROOT)},
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while lease_holder(ctx.engine, loc) != "victim":
                assert victim.poll() is None and time.monotonic() < deadline, "never leased"
                time.sleep(0.05)
            time.sleep(1.5)  # let it write part of the location, then kill it mid-apply
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait(timeout=10)
        finally:
            if victim.poll() is None:
                os.killpg(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        opts = runner.apply_options(ctx, holder="rescuer")
        # The dead worker's lease is still live: nobody else may pace its location yet.
        first = asyncio.run(runner.apply(ctx, loc, opts))
        assert first.stopped == Stop.lease_held_elsewhere and first.calls == 0
        while lease_holder(ctx.engine, loc) == "victim":
            assert time.monotonic() - killed_at < 10, "the lease never expired"
            time.sleep(0.2)
        second = asyncio.run(runner.apply(ctx, loc, dataclasses.replace(
            opts, lease_ttl=timedelta(seconds=30))))
        assert second.stopped is None and second.outcomes.get("done", 0) > 0
        # Only the killed location's campaign was synced: compare that campaign alone.
        end_camp = end_state(_only(sb, camp.drop_id), settings)
        assert not end_camp.duplicate_notes and not end_camp.missing_notes, end_camp.describe()
        assert not end_camp.missing_tags, end_camp.describe()


class _only:
    """The sandbox seen through one campaign (the others were not synced in this test)."""

    def __init__(self, sb: SandboxServer, drop_id: str) -> None:
        self.sb, self.drop_id = sb, drop_id

    def truth(self) -> dict[str, Any]:
        return self.sb.truth(self.drop_id)

    def recipients(self) -> list[dict[str, Any]]:
        return self.sb.recipients(self.drop_id)

    def state(self) -> dict[str, Any]:
        return self.sb.state()
