"""Prefect's cost: the shipped flow beside a plain `run_sync`, and batch tasks against one
task per write.

Every variant runs in a child process of its own against a fresh sandbox (same seed), so
wall time, CPU and peak RSS are each variant's alone. Every flow runs against one standalone
`prefect server start` on a loopback port, started here with its own PREFECT_HOME: as
deployed, the server's work is done in its own process, not counted against the flow's
(`prefect_test_harness()` would run it inside the flow's process).

Part 1, the cost per run, at HighLevel's real limit (time scale 1: 100 requests per 10 s per
location): the same scenario synced by a plain `run_sync` and by the shipped
`sync-campaigns` flow, then an empty run of each (a second run in a new process over the
same store: every event already written, nothing to write), as a deployment's 15-minute tick
runs it. Prefect's cost = flow wall - plain wall.

Part 2, the task granularity, at time scale 0.001 (the limits must not hide Prefect's cost):
plain, the shipped flow, and the same begin/fetch/finish tasks with the apply as one task per
write (one tags call per contact, or one note), each calling the HighLevel client once.

Only the call is timed (`run_sync` or the flow); imports and the process's exit are reported
beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    ROOT,
    Report,
    SandboxProcess,
    finish,
    free_port,
    md_table,
    parser,
    sandbox_env,
    stop_group,
    workdir,
)

NAME = "prefect_overhead"
REAL_SCALE = 1.0
"""HighLevel's real limit: the cost per run is measured where a deployment runs."""
FAST_SCALE = 0.001
"""Limits 1000 times faster: Prefect's per-task cost is not hidden behind pacing."""
SEED = 31
VARIANTS = ("plain", "flow", "per-write")
WARM_UP_CONTACTS = 4
EMPTIES = 5
"""Empty runs of each variant: the fixed cost is the difference of their medians (one run
varies by a few tenths of a second on a shared machine)."""
SHARE_TARGET = 0.02
FIXED_TARGET = 1.0
BIN = Path(sys.executable).parent

# -- the per-write flow (built only inside the child, where Prefect is imported) -----------

def _write_units(config_path: str, locations: list[str]) -> list[tuple[str, list[int]]]:
    """(location, row ids) per write: one tags call per contact, one per note."""
    from sqlmodel import Session, col, select

    from mailsync.store.models import WriteIntent, WriteKind, WriteStatus
    from tasks.context import build_context

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


async def _write_once(config_path: str, location: str, ids: list[int]) -> str:
    """One write unit: resolve its contact if needed, one call, its outcome stored through
    the ledger's own statements, as the batch apply uses them (store/ledger.py)."""
    from sqlmodel import Session, select

    from mailsync.store import ledger
    from mailsync.store.models import WriteIntent, WriteKind, WriteStatus
    from mailsync.store.reasons import Reason
    from mailsync.sync.apply import row_outcomes
    from mailsync.sync.resolve import load_recipients, resolve
    from tasks.context import build_context

    ctx = build_context(config_path)
    with Session(ctx.engine) as s:
        first = s.exec(select(WriteIntent).where(WriteIntent.id == ids[0])).one()
    pair = (first.drop_id, first.recipient_key)
    rows = ledger.rows_of(ctx.engine, ledger.Selection(location), ids)
    async with ctx.highlevel(location) as hl:
        contact = first.contact_id
        if contact is None:
            res = await resolve(ctx.engine, hl, location, load_recipients(ctx.engine, {pair})[pair],
                                create_missing=ctx.settings.campaign(
                                    first.drop_id).create_missing_contacts)
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
        ledger.write(ctx.engine, ledger.Batch(location, outcomes=row_outcomes(rows, outcome)))
        return outcome.status


def _per_write_flow() -> Any:
    """The shipped flow's tasks, with the apply as one task per write (Prefect imported
    only here, in the child)."""
    from prefect import flow, task, unmapped

    from flows._common import collect, in_thread, task_runner
    from tasks.artifacts import publish
    from tasks.sync import COMMON, begin_run, fetch_and_plan, finish_run

    @task(name="write-one", **COMMON)
    def write_one(config_path: str, unit: tuple[str, list[int]]) -> str:
        """One HighLevel write (one call), in its own event loop like the shipped tasks."""
        return asyncio.run(_write_once(config_path, unit[0], unit[1]))

    def body(config_path: str) -> tuple[Any, dict[str, Any]]:
        plan = begin_run(config_path, "sync")
        fetches = fetch_and_plan.map(unmapped(config_path), plan.drop_ids,
                                     unmapped(plan.run_id))
        fetched, errors = collect(fetches, plan.drop_ids, "campaign")
        todo = _write_units(config_path, plan.locations)
        writes = write_one.map(unmapped(config_path), todo)
        done, write_errors = collect(writes, [str(u[1][0]) for u in todo], "write")
        return (finish_run(config_path, plan, "sync", False, fetched, [],
                           errors + write_errors),
                {"tasks": len(todo), "statuses": {s: done.count(s) for s in set(done)}})

    @flow(name="sync-per-write", task_runner=task_runner(), persist_result=False)
    async def sync_per_write(config_path: str) -> dict[str, Any]:
        # Shaped as the shipped flows (flows/_common.py): an async flow, its body in a thread.
        artifacts, extra = await in_thread(body, config_path)
        return {**await publish(artifacts), **extra}

    return sync_per_write


# -- a standalone Prefect server ------------------------------------------------------------

@dataclass
class Server:
    """`prefect server start` on a free loopback port, its own home; our child process."""

    api: str
    proc: subprocess.Popen[bytes]
    log: Path

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", PYTHONPATH=os.pathsep.join((str(ROOT / "src"), str(ROOT))))
    return env


@contextlib.contextmanager
def prefect_server(tmp: Path) -> Iterator[Server]:
    """A server as a deployment runs one (defaults; SQLite; UI and scheduler off: no
    deployment is scheduled here)."""
    home = tmp / "server-home"
    home.mkdir()
    api = f"http://127.0.0.1:{free_port()}/api"
    log = tmp / "prefect-server.log"
    env = {**_base_env(home), "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", api.split(":")[2].split("/")[0]], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("prefect server did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.3)
        yield Server(api, proc, log)
    finally:
        stop_group(proc)


def _when(iso: str | None) -> float | None:
    return dt.datetime.fromisoformat(iso).timestamp() if iso else None


def flow_run_record(api: str, flow_run_id: str) -> dict[str, Any]:
    """What the server recorded of a flow run: its span, task runs, logs and artifacts
    (waiting a little for the task-run events the server records asynchronously)."""
    with httpx.Client(base_url=api, timeout=30) as c:
        fr = c.get(f"/flow_runs/{flow_run_id}").json()
        match = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
        tasks: list[dict[str, Any]] = []
        for _ in range(20):
            tasks = c.post("/task_runs/filter", json={**match, "limit": 200}).json()
            if all(t.get("end_time") for t in tasks) and tasks:
                break
            time.sleep(0.5)
        logs = c.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}},
                                            "limit": 200}).json()
        arts = c.post("/artifacts/filter", json={**match, "limit": 200}).json()
    return {"start": _when(fr.get("start_time")), "end": _when(fr.get("end_time")),
            "tasks": [{"name": t["name"], "start": _when(t.get("start_time")),
                       "end": _when(t.get("end_time"))} for t in tasks],
            "logs": len(logs), "artifacts": len(arts),
            "artifact_keys": sorted(a["key"] for a in arts if a.get("key")),
            "artifact_updates": sum(1 for a in arts if a.get("type") == "progress")}


# -- the child: one variant, once -----------------------------------------------------------

def _run_plain(config: str) -> dict[str, Any]:
    t = time.perf_counter()
    from mailsync.config import load_settings
    from mailsync.sync.context import SyncContext
    from mailsync.sync.runner import RunHooks, run_sync

    imported = time.perf_counter() - t
    ctx = SyncContext(load_settings(config), timeout=60)
    applying: list[float] = []
    # Told before the first apply starts: the boundary between fetching and applying.
    hooks = RunHooks(on_apply=lambda _loc, _n: applying.append(time.perf_counter()))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0, e0 = time.perf_counter(), time.process_time(), time.time()
    summary = asyncio.run(run_sync(ctx, hooks=hooks))
    wall = time.perf_counter() - t0
    return {"import_s": imported, "wall_s": wall, "cpu_s": time.process_time() - c0,
            "t0": e0, "base_rss_kib": base,
            "fetch_s": (applying[0] if applying else t0 + wall) - t0,
            "errors": [str(e) for e in summary.errors]}


def _run_flow(variant: str, config: str) -> dict[str, Any]:
    t = time.perf_counter()
    # Prefect imports fastapi's encoder at a direct call's first flow run (to serialize the
    # parameters of the run it creates); a deployed run's flow run exists already. An import
    # like any other: counted with the imports, not the call.
    import fastapi.encoders  # noqa: F401

    from flows.sync import sync_campaigns

    flow = sync_campaigns if variant == "flow" else _per_write_flow()
    imported = time.perf_counter() - t
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0, e0 = time.perf_counter(), time.process_time(), time.time()
    state = flow(config_path=config, return_state=True)
    if inspect.isawaitable(state):  # an async flow, called as a deployment's engine does
        state = asyncio.run(state)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = state.result()
    return {"import_s": imported, "wall_s": wall, "cpu_s": cpu, "t0": e0, "base_rss_kib": base,
            "flow_run_id": str(state.state_details.flow_run_id),
            "errors": out.get("errors"), "tasks": out.get("tasks")}


def child(variant: str, config: str) -> None:
    """In the child: run one variant once; print its figures as one line of JSON."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    os.environ["MAILSYNC_CONFIG"] = config
    info = _run_plain(config) if variant == "plain" else _run_flow(variant, config)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({**info, "peak_rss_kib": peak}), flush=True)


# -- the parent: sandboxes, children, figures -----------------------------------------------

def _writes(hl: dict[str, Any]) -> int:
    """Tags and notes written (reads of a contact's notes are not writes)."""
    return sum(int(c["requests"]) for r, c in hl["by_route"].items()
               if r.split(" ")[0] in ("POST", "DELETE") and r.endswith(("/notes", "/tags")))


def _child(variant: str, config: Path, server: Server, home: Path) -> dict[str, Any]:
    env = {**_base_env(home), "PREFECT_API_URL": server.api}
    cpu0, start = server.cpu_seconds(), time.time()
    proc = subprocess.run([sys.executable, "-m", "bench.prefect_overhead", "--child",
                           variant, "--config", str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    ended = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} child failed: {proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out.get("errors"):
        raise RuntimeError(f"{variant}: {out['errors']}")
    out.update(process_s=ended - start, exit_s=ended - out["t0"] - out["wall_s"],
               server_cpu_s=server.cpu_seconds() - cpu0)
    if out.get("flow_run_id"):
        out["record"] = flow_run_record(server.api, out["flow_run_id"])
        if variant == "flow" and "mailsync-sync-summary" not in out["record"]["artifact_keys"]:
            # The shipped flow's work includes its report: a run without it measures less.
            raise RuntimeError(f"the flow run published no summary artifact: "
                               f"{out['record']['artifact_keys']}")
    return out


@dataclass
class World:
    """A fresh sandbox (same seed), every event emitted, and a store and config of its own."""

    sb: SandboxProcess
    config: Path
    tmp: Path


@contextlib.contextmanager
def world(contacts: int, scale: float) -> Iterator[World]:
    """A sandbox and a store for one variant."""
    with SandboxProcess(seed=SEED, contacts=contacts, time_scale=scale,
                        oauth_locations=0) as sb, workdir(NAME) as tmp, \
            sandbox_env(sb.manifest(), tmp) as config:
        sb.advance_all()
        yield World(sb, config, tmp)


def run_once(variant: str, w: World, server: Server, run: str) -> dict[str, Any]:
    """One run of a variant in a fresh process, with fresh rate windows; its figures and
    what the sandbox saw."""
    w.sb.reset_stats()
    w.sb.reset_limits()
    res = _child(variant, w.config, server, w.tmp / "prefect-home")
    hl = w.sb.stats()["highlevel"]
    return {**res, "variant": variant, "run": run, "hl_requests": int(hl["total"]["requests"]),
            "writes": _writes(hl)}


def real_limit(contacts: int, server: Server, empties: int,
               warm_up: bool = True) -> dict[str, dict[str, Any]]:
    """Plain and flow at the real limit: the full run of each, then `empties` empty runs of
    each, alternating (so a change in the machine's load falls on both alike); each variant
    runs once, unmeasured, on a small sandbox first."""
    out: dict[str, dict[str, Any]] = {"plain": {}, "flow": {}}
    for v in out if warm_up else ():  # a deployment's server has run flows before
        with world(WARM_UP_CONTACTS, FAST_SCALE) as w:
            run_once(v, w, server, "warm-up")
    with contextlib.ExitStack() as stack:
        worlds = {v: stack.enter_context(world(contacts, REAL_SCALE)) for v in out}
        for v in out:
            out[v]["full"] = run_once(v, worlds[v], server, "full")
        for i in range(empties):
            for v in out:
                out[v][f"empty-{i + 1}"] = run_once(v, worlds[v], server, f"empty {i + 1}")
    return out


def fast_scale(contacts: int, server: Server) -> dict[str, dict[str, Any]]:
    """Every variant's full run at time scale 0.001, each on a fresh sandbox."""
    out = {}
    for v in VARIANTS:
        with world(contacts, FAST_SCALE) as w:
            out[v] = run_once(v, w, server, "full")
    return out


def _span(tasks: list[dict[str, Any]], prefix: str) -> float:
    runs = [t for t in tasks if t["name"].startswith(prefix) and t["start"] and t["end"]]
    return max(t["end"] for t in runs) - min(t["start"] for t in runs) if runs else 0.0


def flow_phases(res: dict[str, Any]) -> dict[str, float]:
    """Where a flow run's wall time went, from the server's record of its task runs."""
    rec, t0 = res["record"], res["t0"]
    tasks = rec["tasks"]
    spans = {name: _span(tasks, prefix) for name, prefix in (
        ("begin-run task", "begin-run"), ("fetch-and-plan tasks", "fetch-and-plan"),
        ("apply tasks", "apply-"), ("finish-run task", "finish-run"))}
    running = (rec["end"] or 0) - (rec["start"] or 0)
    return {"call → flow run running": (rec["start"] or t0) - t0, **spans,
            "flow body between tasks": running - sum(spans.values()),
            "flow run completed → call returned": t0 + res["wall_s"] - (rec["end"] or t0)}


def _empties(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for k, r in runs.items() if k.startswith("empty")]


def _median_empty(runs: dict[str, dict[str, Any]], key: str = "wall_s") -> float:
    return statistics.median(r[key] for r in _empties(runs))


def _cost_figures(rep: Report, real: dict[str, dict[str, dict[str, Any]]]) -> None:
    plain, flow = real["plain"], real["flow"]
    full = flow["full"]["wall_s"]
    cost = full - plain["full"]["wall_s"]
    fixed = _median_empty(flow) - _median_empty(plain)
    rep.add("real limit: Prefect's cost per run, s (flow wall - plain run_sync wall)", cost,
            fmt="{:.2f} s")
    rep.add("real limit: Prefect's share of the flow run's wall time", 100 * cost / full,
            f"≤ {100 * SHARE_TARGET:.0f} %", cost / full <= SHARE_TARGET, fmt="{:.1f} %")
    rep.add("real limit: fixed cost per flow run, s (median empty flow - median empty plain)",
            fixed, f"≤ {FIXED_TARGET:.0f} s", fixed <= FIXED_TARGET, fmt="{:.2f} s")


def _granularity_figures(rep: Report, fast: dict[str, dict[str, Any]]) -> None:
    plain, flow, per = fast["plain"], fast["flow"], fast["per-write"]
    rep.add("time scale 0.001: wall time, per-write flow / shipped flow",
            per["wall_s"] / flow["wall_s"], "> 1: batch is cheaper",
            per["wall_s"] > flow["wall_s"], fmt="{:.2f}×")
    grow = {k: max(1, v["peak_rss_kib"] - v["base_rss_kib"]) for k, v in fast.items()}
    rep.add("time scale 0.001: peak RSS, per-write flow / shipped flow",
            per["peak_rss_kib"] / flow["peak_rss_kib"], fmt="{:.2f}×")
    rep.add("time scale 0.001: RSS growth during the flow, per-write / shipped",
            grow["per-write"] / grow["flow"], fmt="{:.2f}×")
    rep.add("time scale 0.001: wall time, shipped flow / plain run_sync",
            flow["wall_s"] / plain["wall_s"], fmt="{:.2f}×")
    per_task = (per["wall_s"] - flow["wall_s"]) / max(1, per.get("tasks") or 1)
    rep.add("time scale 0.001: extra wall ms per write task", 1000 * per_task, fmt="{:.1f} ms")


def _row(r: dict[str, Any]) -> list[Any]:
    rec = r.get("record") or {}
    return [r["variant"], r["run"], r.get("tasks") or "-", r["writes"], r["hl_requests"],
            f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}", f"{r['server_cpu_s']:.2f}",
            f"{r['import_s']:.2f}", f"{r['exit_s']:.2f}", rec.get("logs", "-"),
            rec.get("artifacts", "-"), f"{r['peak_rss_kib'] / 1024:.0f}"]


_HEADER = ["variant", "run", "write tasks", "writes", "HighLevel requests", "wall s",
           "CPU s", "server CPU s", "imports s", "exit s", "API logs", "artifacts",
           "peak RSS MiB"]


def _phase_rows(real: dict[str, dict[str, dict[str, Any]]]) -> list[list[Any]]:
    full = flow_phases(real["flow"]["full"])
    empty = [flow_phases(r) for r in _empties(real["flow"])]
    rows = [[name, f"{full[name]:.2f}", f"{statistics.median(e[name] for e in empty):.2f}"]
            for name in full]
    plain = real["plain"]
    apply_s = {k: r["wall_s"] - r["fetch_s"] for k, r in plain.items()}
    rows += [["plain run_sync: fetch and plan", f"{plain['full']['fetch_s']:.2f}",
              f"{_median_empty(plain, 'fetch_s'):.2f}"],
             ["plain run_sync: apply and finish", f"{apply_s['full']:.2f}",
              f"{statistics.median(v for k, v in apply_s.items() if k != 'full'):.2f}"]]
    return rows


def _cost_details(real: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    n = len(_empties(real["flow"]))
    return [
        "**At HighLevel's real limit** (time scale 1). *empty*: a later run in a new process "
        "over the same store and sandbox, every event already written: it re-reads the "
        f"lookback window and writes nothing; {n} of each, plain and flow alternating.",
        "",
        *md_table(_HEADER, [_row(r) for v in real.values() for r in v.values()]),
        "Where the flow's wall time went (seconds, from the server's record of its task "
        "runs; the plain run's two phases for comparison):", "",
        *md_table(["phase", "full", f"empty (median of {n})"], _phase_rows(real)),
        "*flow run completed → call returned*: after a sync flow, Prefect's engine joins "
        "its heartbeat thread, which sleeps in whole seconds (`time.sleep(1)` in "
        "`prefect.flow_engine._send_heartbeats`, prefect 3.9.1): 0.94 s of the median "
        "empty run when the flows were sync (2.3 % of a full run and 1.26 s per run, both "
        "over target). The flows are async now (flows/_common.py: the body in a thread, "
        "the artifacts awaited in the flow), and an async flow's engine does not wait.", "",
    ]


def _granularity_details(fast: dict[str, dict[str, Any]]) -> list[str]:
    return [
        "**Task granularity** (time scale 0.001): the per-write flow makes the same calls as "
        "the shipped apply (one tags call per contact, one call per note, lookups where no "
        "contact id is known yet) but not its reads of a contact's notes before this store's "
        "first note to it (the requests' difference); the rest of the difference is the task "
        "granularity: a task run "
        "and its state changes through the Prefect API, a thread hop, and a fresh event "
        "loop and HTTP connection per task.", "",
        *md_table(_HEADER, [_row(r) for r in fast.values()]),
    ]


def details(real: dict[str, dict[str, dict[str, Any]]], fast: dict[str, dict[str, Any]],
            contacts: int, warmed: bool) -> list[str]:
    """The section's text and tables below the figures."""
    intro = [
        f"Sandbox seed {SEED}, {contacts} recipients, 3 campaigns, 3 locations, every event "
        "emitted, no faults; each variant in a fresh process and a fresh sandbox"
        + (f" (after one unmeasured run of each on a {WARM_UP_CONTACTS}-recipient sandbox)"
           if warmed else "") + ". Flows run "
        "against one standalone `prefect server start` (SQLite, defaults, on this machine), "
        "started by the benchmark: its work is its own process's (server CPU s), as in a "
        "deployment; the thread pool as shipped (`MAILSYNC_TASK_WORKERS`, default 8), log "
        "level as shipped (INFO). Wall = the call alone (`run_sync` or the flow); imports "
        "and the process's exit after it are shown beside it.", ""]
    return [*intro, *(_cost_details(real) if real else []),
            *(_granularity_details(fast) if fast else [])]


def main(argv: list[str]) -> Report:
    """Run the benchmark; returns its report (also printed and written)."""
    p = parser(NAME, __doc__)
    p.add_argument("--child", choices=VARIANTS, help="(internal)")
    p.add_argument("--config", help="(internal)")
    p.add_argument("--part", choices=("all", "cost", "granularity"), default="all",
                   help="cost: the real-limit comparison only (~4 min); granularity: the "
                        "per-write comparison only (~3 min); all: both, one section")
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.config)
        return Report(NAME, "", False)
    started = time.monotonic()
    contacts = 20 if args.quick else 300  # 300: ~620 HighLevel requests per location
    with workdir(NAME + "-server") as tmp, prefect_server(tmp) as server:
        real = (real_limit(contacts, server, 1 if args.quick else EMPTIES, not args.quick)
                if args.part != "granularity" else {})
        fast = fast_scale(contacts, server) if args.part != "cost" else {}
    rep = Report(NAME, "5. Prefect's cost per run, and batch tasks against one task per write",
                 args.quick)
    if real:
        _cost_figures(rep, real)
    if fast:
        _granularity_figures(rep, fast)
    rep.details = details(real, fast, contacts, warmed=bool(real) and not args.quick)
    rep.data = {"real": real, "fast": fast}
    finish(rep, args, started, [NAME, *argv])
    return rep


if __name__ == "__main__":
    main(sys.argv[1:])
