"""Prefect overhead: the shipped granularity against one task per write.

Three ways to sync the same scenario (~2,000 writes), each in its own child process with
its own sandbox (same seed), so wall time and peak RSS are each variant's alone:

* plain: `run_sync`, no Prefect (the floor);
* batch: the shipped `flows.sync.sync_campaigns` (one task per campaign to fetch and plan,
  one per location to apply), under `prefect_test_harness()` with a temp PREFECT_HOME;
* per-write: the same begin/fetch/finish tasks, but the apply is one task per write (one
  tags call per contact, or one note), each calling the HighLevel client once.

Only the flow call is timed: entering the harness (its ephemeral server) is not.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

from bench._common import (
    ROOT,
    Report,
    SandboxProcess,
    finish,
    md_table,
    parser,
    sandbox_env,
    workdir,
)

NAME = "prefect_overhead"
TIME_SCALE = 0.001  # the limits must not hide Prefect's cost
VARIANTS = ("plain", "batch", "per-write")


# -- the per-write flow (built only inside the child, where Prefect is imported) -----------

def _per_write_flow() -> Any:
    from prefect import flow, task, unmapped
    from sqlmodel import Session, col, select

    from flows._common import collect, task_runner
    from mailsync.store import ledger
    from mailsync.store.models import WriteIntent, WriteKind, WriteStatus
    from mailsync.store.reasons import Reason
    from mailsync.sync.apply import row_outcomes
    from mailsync.sync.resolve import load_recipients, resolve
    from tasks.artifacts import publish
    from tasks.context import build_context
    from tasks.sync import COMMON, begin_run, fetch_and_plan, finish_run

    def units(config_path: str, locations: list[str]) -> list[tuple[str, list[int]]]:
        """(location, row ids) per write: one tags call per contact, one per note."""
        ctx = build_context(config_path)
        with Session(ctx.engine) as s:
            rows = s.exec(select(WriteIntent).where(
                col(WriteIntent.location_id).in_(locations),
                WriteIntent.status == WriteStatus.pending).order_by(col(WriteIntent.id))).all()
        tags: dict[tuple[str, str, str], list[int]] = defaultdict(list)
        out: list[tuple[str, list[int]]] = []
        for r in rows:
            assert r.id is not None
            if r.kind == WriteKind.note:
                out.append((r.location_id, [r.id]))
            else:
                tags[(r.location_id, r.drop_id, r.recipient_key)].append(r.id)
        return [(loc, ids) for (loc, _d, _k), ids in tags.items()] + out

    async def write(config_path: str, location: str, ids: list[int]) -> str:
        ctx = build_context(config_path)
        with Session(ctx.engine) as s:
            first = s.exec(select(WriteIntent).where(WriteIntent.id == ids[0])).one()
        # The ledger's own statements, as the batch apply uses them (store/ledger.py).
        rows = [r for r in ledger.rows_of(ctx.engine, ledger.Selection(location),
                                          [(first.drop_id, first.recipient_key)])
                if r.id in ids]
        async with ctx.highlevel(location) as hl:
            contact = first.contact_id
            if contact is None:
                who = load_recipients(ctx.engine, {(first.drop_id, first.recipient_key)})
                res = await resolve(ctx.engine, hl, location,
                                    who[(first.drop_id, first.recipient_key)])
                contact = res.contact_id
                if contact is None:
                    ledger.mark(ctx.engine, ids, WriteStatus.rejected, reason=res.reason,
                                detail=res.detail)
                    return "rejected"
                ledger.link_rows(ctx.engine, [(i, contact) for i in ids])
            if first.kind == WriteKind.note:
                ledger.mark(ctx.engine, ids, WriteStatus.unknown, reason=Reason.sending,
                            contact_id=contact)
                outcome = await hl.create_note(contact, first.body or "")
            else:
                outcome = await hl.add_tags(contact, sorted({r.tag or "" for r in rows}))
            ledger.write(ctx.engine, ledger.Batch(location,
                                                  outcomes=row_outcomes(rows, outcome)))
            return outcome.status

    @task(name="write-one", **COMMON)
    def write_one(config_path: str, unit: tuple[str, list[int]]) -> str:
        """One HighLevel write (one call), in its own event loop like the shipped tasks."""
        return asyncio.run(write(config_path, unit[0], unit[1]))

    @flow(name="sync-per-write", task_runner=task_runner(), persist_result=False)
    def sync_per_write(config_path: str) -> dict[str, Any]:
        plan = begin_run(config_path, "sync")
        fetches = fetch_and_plan.map(unmapped(config_path), plan.drop_ids,
                                     unmapped(plan.run_id))
        fetched, errors = collect(fetches, plan.drop_ids, "campaign")
        todo = units(config_path, plan.locations)
        writes = write_one.map(unmapped(config_path), todo)
        done, write_errors = collect(writes, [str(u[1][0]) for u in todo], "write")
        out = publish(finish_run(config_path, plan, "sync", False, fetched, [],
                                 errors + write_errors))
        return {**out, "tasks": len(todo), "statuses": {s: done.count(s) for s in set(done)}}

    return sync_per_write


def child(variant: str, config: str) -> None:
    """In the child: run one variant once; print wall, CPU and RSS as JSON."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    os.environ["MAILSYNC_CONFIG"] = config
    info: dict[str, Any] = {}
    if variant == "plain":
        from mailsync.config import load_settings
        from mailsync.sync.context import SyncContext
        from mailsync.sync.runner import run_sync

        ctx = SyncContext(load_settings(config), timeout=60)
        ctx.engine  # noqa: B018  (store created before the clock starts)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0, c0 = time.perf_counter(), time.process_time()
        summary = asyncio.run(run_sync(ctx))
        info["errors"] = summary.errors
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    else:
        from prefect.testing.utilities import prefect_test_harness

        from flows.sync import sync_campaigns

        flow = sync_campaigns if variant == "batch" else _per_write_flow()
        with prefect_test_harness(server_startup_timeout=120):
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0, c0 = time.perf_counter(), time.process_time()
            out = flow(config_path=config)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        info["errors"] = out.get("errors")
        info["tasks"] = out.get("tasks")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "base_rss_kib": base,
                      "peak_rss_kib": peak, **info}))


def measure(variant: str, contacts: int) -> dict[str, Any]:
    """One variant against a fresh sandbox, in a fresh process with its own PREFECT_HOME."""
    with SandboxProcess(seed=31, contacts=contacts, time_scale=TIME_SCALE,
                        oauth_locations=0) as sb, workdir(NAME) as tmp, \
            sandbox_env(sb.manifest(), tmp) as config, \
            tempfile.TemporaryDirectory(prefix="prefect-home-") as home:
        sb.advance_all()
        sb.reset_stats()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": home,
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
        proc = subprocess.run([sys.executable, "-m", "bench.prefect_overhead", "--child",
                               variant, "--config", str(config)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            raise RuntimeError(f"{variant} child failed: {proc.stderr[-3000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        if out.get("errors"):
            raise RuntimeError(f"{variant}: {out['errors']}")
        hl = sb.stats()["highlevel"]
    writes = sum(int(c["requests"]) for r, c in hl["by_route"].items()
                 if r.endswith("/notes") or r.endswith("/tags"))
    return {**out, "variant": variant, "hl_requests": int(hl["total"]["requests"]),
            "writes": writes}


def main(argv: list[str]) -> Report:
    """Run the benchmark; returns its report (also printed and written)."""
    p = parser(NAME, __doc__)
    p.add_argument("--child", choices=VARIANTS, help="(internal)")
    p.add_argument("--config", help="(internal)")
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.config)
        return Report(NAME, "", False)
    started = time.monotonic()
    contacts = 20 if args.quick else 300  # ~7 HighLevel calls per recipient
    res = {v: measure(v, contacts) for v in VARIANTS}
    plain, batch, per = res["plain"], res["batch"], res["per-write"]
    rep = Report(NAME, "5. Prefect overhead: batch tasks against one task per write",
                 args.quick)
    rep.add("wall time, per-write flow / batch flow", per["wall_s"] / batch["wall_s"],
            "> 1: batch is cheaper", per["wall_s"] > batch["wall_s"], fmt="{:.2f}×")
    grow = {k: max(1, v["peak_rss_kib"] - v["base_rss_kib"]) for k, v in res.items()}
    rep.add("peak RSS, per-write flow / batch flow", per["peak_rss_kib"] / batch["peak_rss_kib"],
            fmt="{:.2f}×")
    rep.add("RSS growth during the flow, per-write / batch", grow["per-write"] / grow["batch"],
            fmt="{:.2f}×")
    rep.add("wall time, batch flow / plain run_sync (Prefect's cost as shipped)",
            batch["wall_s"] / plain["wall_s"], fmt="{:.2f}×")
    per_task = (per["wall_s"] - batch["wall_s"]) / max(1, per.get("tasks") or 1)
    rep.add("extra wall ms per write task", 1000 * per_task, fmt="{:.1f} ms")
    rows = [[v, r.get("tasks") or "-", r["writes"], r["hl_requests"], f"{r['wall_s']:.1f}",
             f"{r['cpu_s']:.1f}", f"{r['base_rss_kib'] / 1024:.0f}",
             f"{r['peak_rss_kib'] / 1024:.0f}"] for v, r in res.items()]
    rep.details += [
        f"Sandbox seed 31, {contacts} recipients, 3 campaigns, 3 locations, time scale "
        f"{TIME_SCALE}, all events emitted; each variant in a fresh process and a fresh "
        "sandbox; Prefect under `prefect_test_harness()` with a temp PREFECT_HOME, the "
        "shipped thread pool (`MAILSYNC_TASK_WORKERS`, default 8). RSS before = after "
        "imports and (for Prefect) after the harness's server started.", "",
        *md_table(["variant", "write tasks", "writes", "HighLevel requests", "flow wall s",
                   "CPU s (this process)", "RSS before MiB", "peak RSS MiB"], rows),
        "The per-write flow makes the same calls as the batch apply (one tags call per "
        "contact, one call per note, lookups where no contact id is known yet), so the "
        "difference is the task granularity: task-run creation and state changes through "
        "the Prefect API, a thread hop, and a fresh event loop and HTTP connection per task.",
    ]
    rep.data = res
    finish(rep, args, started, [NAME, *argv])
    return rep


if __name__ == "__main__":
    main(sys.argv[1:])
