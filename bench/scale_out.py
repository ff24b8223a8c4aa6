"""Scale-out: 100 HighLevel locations on one PostgreSQL store, applied by 1, 2 and 4 worker
processes sharing them through the store's location leases; and a worker killed mid-run.

Each worker is a process doing what a `run_sync` (or a Prefect worker's apply tasks, which
wait for a busy lease) does: it applies every location whose lease it can take, holding it
while it works, and comes back for the ones another worker held until no location has open
rows. Each names itself as if on a host of its own, so a dead worker's leases pass on when
they expire, as between machines (on one host a dead holder's pid is noticed at once).

Every run starts from the same world: a fresh sandbox (one US campaign per location, every
event emitted) and a fresh PostgreSQL schema, fetched and planned before the workers start;
only the apply is measured. Two time scales: one where HighLevel's limit (100 requests per
10 s per location, scaled) bounds every location even for one worker, and one where it
cannot (the machine's CPU is the bound), to show where that is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench._common import (
    ROOT,
    Report,
    SandboxProcess,
    child_env,
    finish,
    md_table,
    parser,
    sandbox_env,
    workdir,
)
from mailsync.store.leases import DEFAULT_TTL

NAME = "scale_out"
LOCATIONS, QUICK_LOCATIONS = 100, 10
WORKERS, QUICK_WORKERS = (1, 2, 4), (1, 2)
LIMIT_SCALE = 4.0
"""100 requests per 40 s per location: 250 requests/s for 100 locations, which one worker
and the sandbox drive with CPU to spare on two cores, so the limit is what binds."""
CPU_SCALE = 0.1
"""100 requests per second per location: 10,000/s for 100, far beyond two cores."""
QUICK_SCALE = 0.5
LIMIT_RECIPIENTS, CPU_RECIPIENTS, QUICK_RECIPIENTS = 50, 12, 12
"""Recipients per location: ~8 HighLevel requests each, so 50 fill about four windows."""
TARGET = 0.95  # of the allowed rate, as for one location (section 1)
THROTTLED_TARGET = 0.1  # % of requests answered 429, as for one location (section 1)
LEASE_TTL = DEFAULT_TTL.total_seconds()  # as shipped: renewed every third of it
QUICK_TTL = 10.0
POLL = 1.0  # how often a worker looks again at locations another worker holds
KILL_AT = 0.3  # of the expected apply time, the victim is killed
SEED = 41
DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
WRITE_ROUTES = ("POST /contacts/{contactId}/notes", "POST /contacts/{contactId}/tags",
                "DELETE /contacts/{contactId}/tags")


# -- the worker (a child process) ---------------------------------------------------------

def _time_requests(sends: list[str]) -> None:
    """Note each HighLevel request: its location, when its answer (or error) came back, and
    its status (0 for none)."""
    from mailsync.clients.highlevel import HighLevelClient

    original = HighLevelClient._send_single_attempt

    async def timed(self: Any, call: Any, tally: Any) -> Any:
        status = 0
        try:
            attempt = await original(self, call, tally)
            status = attempt.http_status or 0
            return attempt
        finally:
            sends.append(f"{self.location_id} {time.time():.4f} {status}\n")

    HighLevelClient._send_single_attempt = timed  # type: ignore[method-assign]


def _open_and_held(engine: Any, holder: str) -> tuple[set[str], set[str]]:
    """Locations with rows a sync would apply, and those another live holder leases now."""
    from mailsync.store.ledger import SYNC_STATUSES
    from mailsync.store.models import LocationLease, WriteIntent, utcnow

    w = WriteIntent.__table__.c  # type: ignore[attr-defined]
    lease = LocationLease.__table__.c  # type: ignore[attr-defined]
    with engine.connect() as conn:
        open_ = set(conn.execute(sa.select(w.location_id).where(
            w.status.in_([str(s) for s in SYNC_STATUSES])).distinct()).scalars())
        held = set(conn.execute(sa.select(lease.location_id).where(
            lease.holder != holder, lease.expires_at > utcnow())).scalars())
    return open_, held


def _append(path: Path, sends: list[str], written: int) -> int:
    with path.open("a") as f:
        f.writelines(sends[written:])
    return len(sends)


async def _flush(sends: list[str], path: Path) -> None:
    """Append the request times to `path` every second (a killed worker keeps most), and
    the rest when cancelled."""
    written = 0
    try:
        while True:
            await asyncio.sleep(1.0)
            written = _append(path, sends, written)
    finally:
        _append(path, sends, written)


async def _work(ctx: Any, opts: Any, order: list[str], sends: list[str],
                times: Path) -> dict[str, Any]:
    from mailsync.sync import runner
    from mailsync.sync.apply import Stop

    applied: dict[str, Any] = {}
    took: dict[str, float] = {}  # when this worker's apply that held the lease started
    started: dict[str, float] = {}
    running: dict[str, asyncio.Task[Any]] = {}
    flusher = asyncio.create_task(_flush(sends, times))
    tries = 0
    try:
        while True:
            open_, held = _open_and_held(ctx.engine, opts.holder)
            todo = [loc for loc in order if loc not in applied and loc not in running]
            if not running and not any(loc in open_ for loc in todo):
                break
            for loc in todo:
                if loc in open_ and loc not in held:
                    tries += 1
                    started[loc] = time.time()
                    running[loc] = asyncio.create_task(runner.apply(ctx, loc, opts))
            if running:
                await asyncio.wait(running.values(), timeout=POLL,
                                   return_when=asyncio.FIRST_COMPLETED)
            else:  # everything left is leased by others: look again soon
                await asyncio.sleep(POLL)
            for loc, task in list(running.items()):
                if task.done():
                    del running[loc]
                    result = task.result()
                    if result.stopped != Stop.lease_held_elsewhere:
                        applied[loc], took[loc] = result, started[loc]
    finally:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
    return {"applied": sum(1 for r in applied.values() if r.calls),
            "calls": sum(r.calls for r in applied.values()),
            "settle_reads": sum(r.settle_reads for r in applied.values()), "tries": tries,
            "took": took}


def worker(config: str, index: int, of: int, start_at: float, times: str, ttl: float) -> None:
    """In the child: apply the locations this worker can lease; print what it did as JSON."""
    import logging

    from mailsync.config import load_settings
    from mailsync.sync import runner
    from mailsync.sync.context import SyncContext

    logging.basicConfig(level=logging.WARNING)
    ctx = SyncContext(load_settings(config), timeout=30)
    ctx.engine  # noqa: B018  (connected before the start)
    holder = f"bench-host-{index}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    opts = dataclasses.replace(runner.apply_options(ctx, holder=holder),
                               lease_ttl=timedelta(seconds=ttl))
    locations = sorted({c.location for c in ctx.settings.campaigns})
    at = index * len(locations) // max(of, 1)  # workers start on different locations
    order = locations[at:] + locations[:at]
    sends: list[str] = []
    _time_requests(sends)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    time.sleep(max(0.0, start_at - time.time()))
    cpu0 = time.process_time()
    out = asyncio.run(_work(ctx, opts, order, sends, Path(times)))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({**out, "index": index, "holder": holder,
                      "cpu_s": time.process_time() - cpu0, "base_rss_kib": base_rss,
                      "peak_rss_kib": usage.ru_maxrss}))


# -- the world each run starts from -------------------------------------------------------

@contextlib.contextmanager
def pg_schema(base_url: str) -> Iterator[str]:
    """A fresh PostgreSQL schema (dropped afterwards); the URL whose connections use it."""
    from mailsync.store.engine import dispose_engine, normalise_url

    base = normalise_url(base_url)
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    admin = sa.create_engine(base)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        yield url
    finally:
        dispose_engine(url)
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@dataclass
class World:
    """A sandbox and a store with every location's writes planned, none applied."""

    sb: SandboxProcess
    config: Path
    settings: Any
    scale: float
    planned: int
    tmp: Path

    @property
    def window(self) -> float:
        """The scaled length of HighLevel's 10 s window."""
        return 10.0 * self.scale


@contextlib.contextmanager
def world(db_url: str, scale: float, locations: int, recipients: int) -> Iterator[World]:
    """Start a sandbox with one US campaign per location, then fetch and plan everything."""
    from mailsync.clients import ratelimit
    from mailsync.config import load_settings
    from mailsync.sync import runner
    from mailsync.sync.context import SyncContext

    ratelimit.forget_pacers()
    with SandboxProcess(seed=SEED, contacts=recipients * locations, campaigns=locations,
                        locations=locations, oauth_locations=0, canada_every=0,
                        time_scale=scale, postalytics_per_second=100_000) as sb, \
            pg_schema(db_url) as url, workdir(NAME) as tmp, \
            sandbox_env(sb.manifest(), tmp, url, postalytics_rate=2000) as config:
        sb.advance_all()
        settings = load_settings(config)
        ctx = SyncContext(settings, timeout=60)
        run_id = runner.start_run(ctx, "sync")

        async def plan() -> list[Any]:
            return await asyncio.gather(*(runner.fetch_and_plan(ctx, c, run_id, max_pages=2000)
                                          for c in settings.campaigns))

        planned = sum(r.planned for r in asyncio.run(plan()))
        sb.reset_stats()
        yield World(sb, config, settings, scale, planned, tmp)


# -- one run: N workers, maybe one killed --------------------------------------------------

@dataclass
class LeaseLog:
    """Every holder each location's lease named, polled from the store, with times."""

    seen: list[tuple[float, str, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def poll(self, url: str) -> None:
        """Until stopped: note each (time, location, holder) of a live lease, every 0.25 s."""
        engine = sa.create_engine(url)
        try:
            while not self.stop.is_set():
                with engine.connect() as conn:
                    now = time.time()
                    for loc, holder in conn.execute(sa.text(
                            "SELECT location_id, holder FROM location_leases "
                            "WHERE expires_at > now()")):
                        self.seen.append((now, loc, holder))
                self.stop.wait(0.25)
        finally:
            engine.dispose()


def _spawn(w: World, index: int, of: int, start_at: float,
           ttl: float) -> subprocess.Popen[str]:
    times = w.tmp / f"times-{index}.txt"
    times.unlink(missing_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "bench.scale_out", "--worker", str(w.config),
         "--index", str(index), "--of", str(of), "--start-at", f"{start_at:.3f}",
         "--times", str(times), "--ttl", str(ttl)],
        cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


def run_workers(w: World, n: int, kill_after: float | None = None,
                ttl: float = LEASE_TTL) -> dict[str, Any]:
    """Start `n` workers together and wait for them; with `kill_after`, SIGKILL worker 0
    that many seconds after the start."""
    log = LeaseLog()
    poller = threading.Thread(target=log.poll, args=(w.settings.database.url,), daemon=True)
    poller.start()
    cpu0 = w.sb.cpu_seconds()
    start_at = time.time() + 5.0  # every worker imported and connected by then
    procs = [_spawn(w, i, n, start_at, ttl) for i in range(n)]
    killed_at = None
    try:
        if kill_after is not None:
            time.sleep(max(0.0, start_at + kill_after - time.time()))
            os.killpg(procs[0].pid, signal.SIGKILL)
            killed_at = time.time()
        outs = [p.communicate(timeout=3600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        log.stop.set()
        poller.join(timeout=10)
    workers = []
    for i, (p, (out, err)) in enumerate(zip(procs, outs, strict=True)):
        if i == 0 and killed_at is not None:
            workers.append({"index": 0, "killed": True})
            continue
        if p.returncode != 0:
            raise RuntimeError(f"worker {i} failed: {err[-3000:]}")
        workers.append(json.loads(out.strip().splitlines()[-1]))
    out = _summarise(w, n, workers, log, start_at, killed_at, w.sb.cpu_seconds() - cpu0)
    return {**out, "ttl": ttl}


def _answers(files: list[Path]) -> list[tuple[str, float, int]]:
    """(location, answer time, status) of every HighLevel request the workers noted."""
    out = []
    for f in files:
        if f.exists():
            for line in f.read_text().splitlines():
                loc, t, status = line.split()
                out.append((loc, float(t), int(status)))
    return out


def _windows(answers: list[tuple[str, float, int]], window: float) -> list[list[int]]:
    """Per location, the requests HighLevel counted in each of its full windows.

    A location's answers are grouped as the server's fixed windows count them (a window
    opens with the first request after the previous one closed); each location's last
    window is left out (the work ran out there, not the budget), as are 429s (not counted).
    """
    by_loc: dict[str, list[float]] = {}
    for loc, t, status in answers:
        if status != 429:
            by_loc.setdefault(loc, []).append(t)
    out = []
    for times in by_loc.values():
        times.sort()
        start, n, full = times[0], 0, []
        for t in times:
            if t - start >= window:
                full.append(n)
                start, n = t, 0
            n += 1
        out.append(full)
    return out


def _fill(windows: list[list[int]], first: bool) -> tuple[float, int]:
    """How full the locations' first windows (or all later full ones) were, of 100."""
    counts = [w[0] for w in windows if w] if first else [n for w in windows for n in w[1:]]
    return (sum(counts) / (100 * len(counts)) if counts else 0.0), len(counts)


def _handovers(log: LeaseLog, killed_at: float, workers: list[dict[str, Any]]) -> list[float]:
    """For each location the killed worker (host 0) held when it died and a live worker
    applied later, the seconds until that worker's apply took the lease. (A location the
    victim had just finished needs no taking over; one left unfinished and never taken over
    would show in the end state, which every run checks.)"""
    last: dict[str, str] = {}
    for t, loc, h in sorted(log.seen):
        if t <= killed_at:
            last[loc] = h
    held = {loc for loc, h in last.items() if h.startswith("bench-host-0:")}
    out = []
    for loc in sorted(held):
        after = [float(x["took"][loc]) for x in workers
                 if not x.get("killed") and loc in x.get("took", {})
                 and float(x["took"][loc]) > killed_at]
        if after:
            out.append(min(after) - killed_at)
    return out


def _summarise(w: World, n: int, workers: list[dict[str, Any]], log: LeaseLog,
               start_at: float, killed_at: float | None, sandbox_cpu: float) -> dict[str, Any]:
    from mailsync.cli.demo import end_state

    answers = _answers([w.tmp / f"times-{i}.txt" for i in range(n)])
    stats = w.sb.stats()["highlevel"]
    routes = {r: int(c["requests"]) for r, c in stats["by_route"].items()}
    end = end_state(w.sb, w.settings)
    times = [t for _loc, t, _s in answers]
    span = max(max(times) - min(times), 1e-9)
    windows = _windows(answers, w.window)
    first_fill, _ = _fill(windows, first=True)
    fill, full = _fill(windows, first=False)
    allowed = len(w.settings.locations) * 100 / w.window
    live = [x for x in workers if not x.get("killed")]
    out = {
        "workers": n, "scale": w.scale, "planned": w.planned, "span_s": span,
        "rate": len(answers) / span, "allowed": allowed,
        "of_allowed": len(answers) / span / allowed, "full_windows": full,
        "window_fill": fill, "first_window_fill": first_fill,
        "requests": int(stats["total"]["requests"]), "times": len(answers),
        "writes": sum(routes.get(r, 0) for r in WRITE_ROUTES),
        "notes_read": routes.get("GET /contacts/{contactId}/notes", 0),
        "throttled": int(stats["total"]["rate_limited"]),
        "duplicate_notes": len(end.duplicate_notes), "exact": end.exact,
        "end": end.describe(), "sandbox_cpu_s": sandbox_cpu,
        "worker_cpu_s": [x["cpu_s"] for x in live],
        "peak_rss_mib": [x["peak_rss_kib"] / 1024 for x in live],
        "applied": [x["applied"] for x in live], "per_worker": workers,
        "holders_per_location": _holders_per_location(log),
    }
    out["writes_rate"] = out["writes"] / span
    out["cpu_busy"] = (sum(out["worker_cpu_s"]) + sandbox_cpu) / span / (os.cpu_count() or 1)
    if killed_at is not None:
        out["killed_after_s"] = killed_at - start_at
        out["handover_s"] = _handovers(log, killed_at, workers)
    return out


def _holders_per_location(log: LeaseLog) -> int:
    """The most holders any one location's lease named over the run."""
    holders: dict[str, set[str]] = {}
    for _t, loc, h in log.seen:
        holders.setdefault(loc, set()).add(h)
    return max((len(v) for v in holders.values()), default=0)


# -- the report ---------------------------------------------------------------------------

def _row(label: str, r: dict[str, Any]) -> list[Any]:
    return [label, r["workers"], f"{r['scale']:g}", f"{r['requests']:,}", f"{r['span_s']:.0f}",
            f"{r['rate']:.0f}", f"{r['allowed']:.0f}", f"{r['of_allowed']:.3f}",
            f"{r['first_window_fill']:.3f}", r["full_windows"], f"{r['window_fill']:.3f}",
            f"{r['writes_rate']:.0f}",
            r["throttled"],
            r["duplicate_notes"], "yes" if r["exact"] else "NO",
            " / ".join(str(a) for a in r["applied"]),
            " / ".join(f"{c:.0f}" for c in r["worker_cpu_s"]), f"{r['sandbox_cpu_s']:.0f}",
            f"{100 * r['cpu_busy']:.0f} %", " / ".join(f"{m:.0f}" for m in r["peak_rss_mib"])]


def _label(r: dict[str, Any]) -> str:
    return (f"{r['workers']} worker(s), one killed" if r.get("killed_after_s") is not None
            else f"{r['workers']} worker(s)")


def add_figures(rep: Report, limit: list[dict], kill: dict, cpu: list[dict]) -> None:
    """Figures beside their targets."""
    for r in limit:
        rep.add(f"{r['workers']} worker(s): HighLevel's windows filled (requests counted per "
                f"full window / 100, each location's first left out), time scale "
                f"{r['scale']:g}", r["window_fill"], f"≥ {TARGET}", r["window_fill"] >= TARGET)
        rep.add(f"{r['workers']} worker(s): the locations' first windows filled (every location "
                "starting at once)", r["first_window_fill"], fmt="{:.3f}")
        rep.add(f"{r['workers']} worker(s): aggregate requests/s / allowed "
                f"({r['allowed']:.0f}/s), whole apply", r["of_allowed"], fmt="{:.3f}")
    runs = [*limit, kill, *cpu]
    rep.add("duplicate notes, every run", sum(r["duplicate_notes"] for r in runs), "0",
            all(r["duplicate_notes"] == 0 for r in runs), fmt="{:.0f}")
    rep.add("runs whose HighLevel end state is exact (nothing missing, nothing twice)",
            sum(r["exact"] for r in runs), f"{len(runs)} of {len(runs)}",
            all(r["exact"] for r in runs), fmt="{:.0f}")
    rep.add("429s, every run (each retried; counted in the end state's check)",
            sum(r["throttled"] for r in runs), fmt="{:.0f}")
    for r in [*limit, kill]:
        share = 100 * r["throttled"] / max(r["times"], 1)
        rep.add(f"429s / HighLevel requests, {_label(r)}", share,
                f"≤ {THROTTLED_TARGET:g} % (section 1)", share <= THROTTLED_TARGET,
                fmt="{:.2f} %")
    rep.add("peak RSS of a worker, largest (MiB)",
            max(m for r in runs for m in r["peak_rss_mib"]), fmt="{:.0f}")
    one = limit[0]
    per_request = one["worker_cpu_s"][0] / max(one["times"], 1)
    rep.add("one worker's CPU ms per HighLevel request (1 worker, limit-bound)",
            1000 * per_request, fmt="{:.2f} ms")
    rep.add("locations one worker keeps at full pace per core (10 requests/s each, real time)",
            1 / (10 * per_request), fmt="{:.0f}")
    worst = max(kill["handover_s"], default=0.0)
    ttl = kill["ttl"]
    rep.add(f"killed worker: its {len(kill['handover_s'])} locations taken over within, "
            f"seconds (lease TTL {ttl:g} s)", worst, f"≤ {ttl + 2 * POLL:g} s",
            worst <= ttl + 2 * POLL, fmt="{:.1f}")
    base = cpu[0]["rate"]
    for r in cpu[1:]:
        rep.add(f"CPU-bound (time scale {r['scale']:g}): requests/s, {r['workers']} workers / 1",
                r["rate"] / base, fmt="{:.2f}×")


def add_tables(rep: Report, limit: list[dict], kill: dict, cpu: list[dict],
               locations: int) -> None:
    """The runs, and how they were made."""
    rows = [_row("limit-bound", r) for r in limit]
    rows.append(_row(f"worker 0 killed at {kill['killed_after_s']:.0f} s", kill))
    rows += [_row("CPU-bound", r) for r in cpu]
    rep.details += [
        f"{locations} locations (one US campaign each) on one PostgreSQL store; a fresh "
        "sandbox and schema per run, fetched and planned before the workers start; only the "
        "apply is measured. Each worker is a process applying every location whose lease it "
        f"can take, looking again every {POLL:g} s at those another worker holds until none "
        f"has open rows; leases last {LEASE_TTL:g} s as shipped (renewed every third; "
        f"{kill['ttl']:g} s in the kill run), and each worker "
        "names itself as on a host of its own, so a dead one's leases pass on at expiry, as "
        "between machines. Allowed = locations × 100 requests per (10 s × time scale). "
        "Window fill: each location's answered requests grouped into HighLevel's fixed "
        "windows (one opens with the first request after the last closed), counted in its "
        "first window and in every later one but its last (where its work ran out): 1.0 would "
        "be every window full; the shipped pacer keeps 98 of 100. A location's first window "
        "is where every location starts at once (leases, the first chunk's reads, resolving). "
        "The whole apply's rate also counts the "
        "first window's burst and the last windows' tails. Requests include lookups and the "
        "notes reads before a store's first note to a contact. CPU busy = (workers' CPU + "
        "the sandbox's) / wall / cores.", "",
        *md_table(["run", "workers", "time scale", "HighLevel requests", "apply wall s",
                   "requests/s", "allowed/s", "requests/s / allowed", "first window fill",
                   "later full windows", "their fill", "writes/s", "429s",
                   "duplicate notes", "exact", "locations applied", "worker CPU s",
                   "sandbox CPU s", "CPU busy", "worker peak RSS MiB"], rows),
        f"The killed run: worker 0 of 2 SIGKILLed mid-run; the survivor took its "
        f"{len(kill['handover_s'])} locations over "
        f"{statistics.median(kill['handover_s']) if kill['handover_s'] else 0:.1f} s "
        f"(median) after the kill; it read {kill['notes_read']:,} contacts' notes against "
        f"{limit[1]['notes_read'] if len(limit) > 1 else 0:,} in the run without a kill "
        "(each contact of the dead worker's unfinished chunks is read once before its next "
        "note; none was sent twice).", "",
        f"**429s** (each answered, retried after a back-off, none lost): "
        f"{sum(r['throttled'] for r in [*limit, kill, *cpu]):,} over every run. A location's "
        "lease named up to "
        + ", ".join(f"{r['holders_per_location']} ({_label(r)})" for r in [*limit, kill])
        + " holders over the run. A pacer that has heard no answer for a window sends one "
        "request alone and waits for its answer before the rest (`highlevel_pacer` makes "
        "them so): a worker that takes a location over, or starts every location at once, "
        "learns from that answer's `X-RateLimit-Remaining` what was already spent of "
        "HighLevel's current window before a burst goes out.",
    ]


def main(argv: list[str]) -> Report:
    """Run the benchmark; returns its report (also printed and written)."""
    p = parser(NAME, __doc__)
    p.add_argument("--database-url", default=os.environ.get("MAILSYNC_TEST_DATABASE_URL")
                   or DEFAULT_DB, help=f"a PostgreSQL server (default {DEFAULT_DB})")
    for hidden in ("--worker", "--index", "--of", "--start-at", "--times", "--ttl"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, int(args.index), int(args.of), float(args.start_at), args.times,
               float(args.ttl))
        return Report(NAME, "", False)
    started = time.monotonic()
    locations = QUICK_LOCATIONS if args.quick else LOCATIONS
    counts = QUICK_WORKERS if args.quick else WORKERS
    limit_scale = QUICK_SCALE if args.quick else LIMIT_SCALE
    recipients = QUICK_RECIPIENTS if args.quick else LIMIT_RECIPIENTS
    limit = []
    for n in counts:
        with world(args.database_url, limit_scale, locations, recipients) as w:
            limit.append(run_workers(w, n))
    with world(args.database_url, limit_scale, locations, recipients) as w:
        # Mid-run: two workers take about half as long as one.
        kill = run_workers(w, 2, kill_after=max(3.0, KILL_AT * limit[0]["span_s"] / 2),
                           ttl=QUICK_TTL if args.quick else LEASE_TTL)
    cpu = []
    for n in counts:
        with world(args.database_url, QUICK_SCALE if args.quick else CPU_SCALE, locations,
                   QUICK_RECIPIENTS if args.quick else CPU_RECIPIENTS) as w:
            cpu.append(run_workers(w, n))
    rep = Report(NAME, f"7. Scale-out: {locations} locations, one PostgreSQL store, "
                 f"{', '.join(map(str, counts))} workers", args.quick)
    add_figures(rep, limit, kill, cpu)
    add_tables(rep, limit, kill, cpu, locations)
    rep.data = {"limit": limit, "kill": kill, "cpu": cpu}
    finish(rep, args, started, [NAME, *argv])
    return rep


if __name__ == "__main__":
    main(sys.argv[1:])
