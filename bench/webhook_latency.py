"""Webhook to HighLevel: seconds from a webhook's delivery to the event's tag and note on the
contact, at HighLevel's real rate limit, inline and through a Prefect deployment trigger;
and the receiver's throughput.

Each mode gets its own sandbox process (time scale 1: 100 HighLevel requests per 10 s per
location, as in production), store and receiver process (`mailsync webhook serve`). First
the scenario's production events arrive as one burst, as fast as the receiver takes them
(its throughput), and a poll names every recipient (a person the store has never seen, with
no carried contact id, waits for the poll: that is the poll's latency, not the push path's).
Then the next days' events are delivered as a steady stream (`RATE` webhooks per second over
three locations), and each delivered event's latency is measured from the sandbox's own
clock: its first delivery attempt, to the later of its note's creation and its tag's
addition on the HighLevel contact (a tag already there from an earlier event counts as
there). The Prefect mode runs a real `prefect server`, `deployments/pool.sh`, and a worker
polling every 2 s; the receiver emits the location's event and the `mailsync-apply`
deployment's trigger runs the apply flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
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

NAME = "webhook_latency"
SECRET_ENV = "MAILSYNC_BENCH_WEBHOOK_SECRET"
SECRET = "bench-webhook-key-5d1e0c7a9f"
RATE = 4.0
"""Webhooks per second in the measured stream (three locations: ~1.3 events/s each)."""
BIN = Path(sys.executable).parent


# -- processes ------------------------------------------------------------------------------

def _wait_http(url: str, proc: subprocess.Popen[bytes] | None, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the process ended ({proc.returncode})")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


@contextlib.contextmanager
def receiver(config: Path, env: dict[str, str], tmp: Path) -> Iterator[str]:
    """`mailsync webhook serve` on a free port; yields its base URL."""
    port = free_port()
    proc = _spawn([sys.executable, "-m", "mailsync", "webhook", "serve", "--config",
                   str(config), "--port", str(port)], env, tmp / "receiver.log")
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/healthz", proc)
        yield base
    finally:
        stop_group(proc)


@contextlib.contextmanager
def prefect_stack(tmp: Path, config: Path, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A Prefect server, prefect.yaml deployed to a process pool, a worker; yields the
    environment that points at the server."""
    home = tmp / "prefect-home"
    home.mkdir()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    base = {k: v for k, v in env.items() if not k.startswith("PREFECT_")}
    base.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                DO_NOT_TRACK="1", PYTHONPATH=str(ROOT), PATH=f"{BIN}:{env.get('PATH', '')}")
    server = _spawn([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                     str(port)], {**base, "PREFECT_UI_ENABLED": "false",
                                  "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"},
                    tmp / "prefect-server.log")
    worker = None
    try:
        _wait_http(api + "/health", server, timeout=120)
        client = {**base, "PREFECT_API_URL": api}
        out = subprocess.run([str(ROOT / "deployments" / "pool.sh")], cwd=ROOT,
                             env={**client, "PREFECT": str(BIN / "prefect")},
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"pool.sh: {out.stdout[-2000:]}{out.stderr[-2000:]}")
        worker = _spawn([str(BIN / "prefect"), "worker", "start", "--pool", "mailsync-pool"],
                        {**client, "MAILSYNC_CONFIG": str(config),
                         "PREFECT_WORKER_QUERY_SECONDS": "2",
                         "PREFECT_WORKER_PREFETCH_SECONDS": "5"}, tmp / "worker.log")
        yield client
    finally:
        if worker is not None:
            stop_group(worker)
        stop_group(server)


# -- the sandbox's webhooks -----------------------------------------------------------------

def set_webhooks(sb: SandboxProcess, base: str, drops: list[str], **options: Any) -> None:
    """Point every campaign's webhook at the receiver."""
    urls = {d: f"{base}/postalytics/{d}?key={SECRET}" for d in drops}
    sb.call("POST", "/webhooks", json={"urls": urls, "options": options})


def wait_deliveries(sb: SandboxProcess, timeout: float = 1200) -> dict[str, Any]:
    """Wait until every queued delivery is done; the view with its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = sb.call("GET", "/webhooks")
        if view["idle"]:
            return sb.call("GET", "/webhooks", params={"log": "1"})
        time.sleep(0.2)
    raise TimeoutError("webhook deliveries did not finish")


def wait_written(engine: Any, timeout: float = 1200, quiet: float = 3.0) -> float:
    """Wait until no ledger row is pending or unknown for `quiet` seconds; when that began."""
    from sqlmodel import Session, col, func, select

    from mailsync.store.models import WriteIntent, WriteStatus

    deadline, since = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        with Session(engine) as s:
            open_rows = s.exec(select(func.count()).select_from(WriteIntent).where(
                col(WriteIntent.status).in_([WriteStatus.pending, WriteStatus.unknown]))).one()
        if open_rows:
            since = None
        else:
            since = since or time.time()
            if time.time() - since >= quiet:
                return since
        time.sleep(0.3)
    raise TimeoutError("writes did not finish")


# -- latency, from the sandbox's own records ------------------------------------------------

def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def latencies(sb: SandboxProcess, event_ids: set[str]) -> tuple[list[float], int]:
    """Seconds from each event's first delivery to its tag and note on the contact, for the
    events given that were delivered and have a contact; and how many of those lack a note."""
    from mailsync.codes import parse_code, tag_for, tag_key
    from mailsync.sandbox.endstate import event_markers

    log = {d["event_id"]: d for d in sb.call("GET", "/webhooks", params={"log": "1"})["log"]}
    people = {(str(r["drop_id"]), str(r["data_id"])): r
              for r in sb.call("GET", "/postalytics/recipients")["recipients"]}
    notes: dict[tuple[str, str], float] = {}
    tags: dict[tuple[str, str], float] = {}
    for c in sb.call("GET", "/highlevel/state")["contacts"]:
        for n in c["notes"]:
            marker = str(n.get("body") or "").rsplit("mailsync ref ", 1)[-1].strip()
            notes[(c["id"], marker)] = _epoch(n["dateAdded"])
        for t, at in (c.get("tagsAddedAt") or {}).items():
            tags[(c["id"], t)] = _epoch(at)
    out: list[float] = []
    missing = 0
    for camp in sb.call("GET", "/postalytics/events")["campaigns"]:
        drop = str(camp["drop_id"])
        for ev in camp["events"]:
            d = log.get(ev["event_id"])
            who = people.get((drop, str(ev["data_id"])))
            if ev["event_id"] not in event_ids or d is None or d["lost"] or not who \
                    or not who.get("hl_contact_id") or d["first_sent_at"] is None:
                continue
            contact = who["hl_contact_id"]
            found = [notes[(contact, m)] for m in event_markers(
                drop, ev, who, camp.get("contact_id_field")) if (contact, m) in notes]
            if not found:
                missing += 1
                continue
            sent = d["first_sent_at"]
            tag_at = tags.get((contact, tag_key(tag_for(parse_code(ev["code"])))), sent)
            out.append(max(min(found), tag_at, sent) - sent)
    return out, missing


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, by linear interpolation; NaN when empty."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


# -- one mode -------------------------------------------------------------------------------

def _add_webhooks(config: Path, mode: str) -> None:
    with config.open("a", encoding="utf-8") as fh:
        fh.write(f'\n[webhooks]\nsecret_env = "{SECRET_ENV}"\nmode = "{mode}"\n')


def _settle(ctx: Any) -> float:
    """Poll until every write is done (a poll may find a location held by a triggered run
    and leave its rows; the schedule would take them later): when that was."""
    from mailsync.sync.runner import run_sync

    for _ in range(20):
        asyncio.run(run_sync(ctx))
        with contextlib.suppress(TimeoutError):
            return wait_written(ctx.engine, timeout=30)
    raise TimeoutError("writes did not settle")


def _phase_log(view: dict[str, Any], before: set[str]) -> list[dict[str, Any]]:
    return [d for d in view["log"] if d["event_id"] not in before]


def _apply_runs(env: dict[str, str]) -> int:
    """How many runs of the mailsync-apply deployment the trigger started."""
    url = env["PREFECT_API_URL"] + "/flow_runs/count"
    body = {"deployments": {"name": {"any_": ["mailsync-apply"]}}}
    return int(httpx.post(url, json=body, timeout=10).json())


def _burst(sb: SandboxProcess, ctx: Any, hours: float) -> dict[str, Any]:
    """The production events at once: throughput, and the time to every write done."""
    t0 = time.time()
    sb.advance(hours)
    log = wait_deliveries(sb)["log"]
    sent = [d for d in log if d["first_sent_at"] is not None and not d["lost"]]
    first = min(d["first_sent_at"] for d in sent)
    last = max(d["delivered_at"] or d["first_sent_at"] for d in sent)
    attempts = sum(d["attempts"] for d in sent)
    done = _settle(ctx)
    return {"webhooks": attempts, "throughput": attempts / max(last - first, 1e-6),
            "drain_s": done - t0, "ids": {d["event_id"] for d in log}}


def _cold(sb: SandboxProcess, ctx: Any, mode: str, before: set[str]) -> list[float]:
    """After a quiet spell (every run gone), the next hours' first event per campaign: the
    latency of a webhook that has to start a run (in `prefect` mode) rather than find one."""
    from mailsync.store.leases import lease_holder

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and any(
            lease_holder(ctx.engine, c.location) for c in ctx.settings.campaigns):
        time.sleep(1)
    time.sleep(5)
    sb.advance(12)
    log = [d for d in wait_deliveries(sb)["log"] if d["event_id"] not in before
           and not d["lost"] and d["first_sent_at"] is not None]
    wait_written(ctx.engine)
    firsts: dict[str, dict[str, Any]] = {}
    for d in sorted(log, key=lambda d: d["first_sent_at"]):
        firsts.setdefault(d["drop_id"], d)
    lat, _ = latencies(sb, {d["event_id"] for d in firsts.values()})
    return lat


def run_mode(mode: str, contacts: int, time_scale: float, burst_hours: float,
             stream_hours: float, rate: float) -> dict[str, Any]:
    """Burst, poll, then a steady stream through one mode's receiver; the figures."""
    from mailsync.config import load_settings
    from mailsync.sandbox.endstate import compare
    from mailsync.sync.context import SyncContext

    with SandboxProcess(seed=7, contacts=contacts, time_scale=time_scale) as sb, \
            workdir(f"{NAME}-{mode}") as tmp, sandbox_env(sb.manifest(), tmp) as config, \
            contextlib.ExitStack() as stack:
        _add_webhooks(config, mode)
        env = {**os.environ, SECRET_ENV: SECRET, "PYTHONPATH": str(ROOT)}
        if mode == "prefect":
            env = {**env, **stack.enter_context(prefect_stack(tmp, config, env))}
        base = stack.enter_context(receiver(config, env, tmp))
        settings = load_settings(config)
        ctx = SyncContext(settings, timeout=30)
        drops = [c.drop_id for c in settings.campaigns]
        set_webhooks(sb, base, drops, concurrency=16)
        burst = _burst(sb, ctx, burst_hours)
        set_webhooks(sb, base, drops, concurrency=4, max_per_second=rate)
        t0 = time.time()
        sb.advance(stream_hours)
        stream = _phase_log(wait_deliveries(sb), burst["ids"])
        wait_written(ctx.engine)
        lat, missing = latencies(sb, {d["event_id"] for d in stream})
        seconds = time.time() - t0
        cold = _cold(sb, ctx, mode, {d["event_id"] for d in wait_deliveries(sb)["log"]})
        runs = _apply_runs(env) if mode == "prefect" else None
        _settle(ctx)
        end = compare(sb.call("GET", "/postalytics/events"),
                      sb.call("GET", "/postalytics/recipients")["recipients"],
                      sb.call("GET", "/highlevel/state"),
                      {c.drop_id: c.selected_codes for c in settings.campaigns})
        hl = sb.stats()["highlevel"]["total"]
    return {"mode": mode, "burst": {k: v for k, v in burst.items() if k != "ids"},
            "stream_events": len(stream), "latencies": lat, "missing": missing,
            "cold": cold,
            "stream_seconds": seconds, "apply_runs": runs, "exact": end.exact,
            "end": end.describe(), "hl_429": int(hl["rate_limited"])}


# -- the report -----------------------------------------------------------------------------

def _mode_rows(out: dict[str, Any]) -> list[Any]:
    lat = out["latencies"]
    return [out["mode"], out["stream_events"], len(lat), f"{pct(lat, 0.5):.2f}",
            f"{pct(lat, 0.95):.2f}", f"{max(lat) if lat else float('nan'):.2f}",
            out["missing"], out["apply_runs"] if out["apply_runs"] is not None else "-",
            out["burst"]["webhooks"], f"{out['burst']['throughput']:.0f}",
            f"{out['burst']['drain_s']:.1f}", out["hl_429"], "yes" if out["exact"] else "NO"]


def _add_mode(rep: Report, out: dict[str, Any], target: float) -> None:
    lat, mode = out["latencies"], out["mode"]
    p95 = pct(lat, 0.95)
    rep.add(f"{mode}: p95 seconds, webhook delivery → tag and note on the contact", p95,
            f"≤ {target:g} s", bool(lat) and p95 <= target, fmt="{:.2f}")
    rep.add(f"{mode}: p50 seconds", pct(lat, 0.5), fmt="{:.2f}")
    rep.add(f"{mode}: cold start, the slowest first webhook after a quiet spell, seconds",
            max(out["cold"]) if out["cold"] else float("nan"), fmt="{:.2f}")
    rep.add(f"{mode}: events of the stream with no note when it ended", out["missing"], "0",
            out["missing"] == 0, fmt="{:.0f}")
    rep.add(f"{mode}: HighLevel exact after the poll (1 = yes)", float(out["exact"]), "1",
            out["exact"], fmt="{:.0f}")


def main(argv: list[str]) -> Report:
    """Run the benchmark; returns its report (also printed and written)."""
    p = parser(NAME, __doc__)
    p.add_argument("--no-prefect", action="store_true", help="inline mode only")
    args = p.parse_args(argv)
    started = time.monotonic()
    quick = args.quick
    contacts, scale, rate = (30, 0.05, 20.0) if quick else (240, 1.0, RATE)
    burst_h, stream_h = 30.0, 48.0
    outs = [run_mode("inline", contacts, scale, burst_h, stream_h, rate)]
    if not (quick or args.no_prefect):
        outs.append(run_mode("prefect", contacts, scale, burst_h, stream_h, rate))
    rep = Report(NAME, "6. Webhook to HighLevel: latency and the receiver's throughput", quick)
    for out in outs:
        _add_mode(rep, out, 5.0 if out["mode"] == "inline" else 30.0)
    inline = outs[0]
    rep.add("receiver throughput, webhooks/s (burst, inline mode, this machine)",
            inline["burst"]["throughput"], fmt="{:.0f}")
    rep.details += [
        f"Sandbox seed 7, {contacts} recipients, 3 campaigns on 3 locations, time scale "
        f"{scale:g} (HighLevel: 100 requests per {10 * scale:g} s per location), no faults. "
        f"Burst: the first {burst_h:g} h of mail (production events) delivered 16 at a time, "
        f"then a poll names every recipient. Stream: the next {stream_h:g} h delivered at "
        f"{rate:g} webhooks/s, 4 in flight; latency per delivered event with a HighLevel "
        "contact, from the sandbox's first delivery attempt to the later of the note's "
        "creation and the tag's addition (both the sandbox's clock, same machine). Prefect: "
        "a local `prefect server`, `deployments/pool.sh`, one process worker with "
        "`PREFECT_WORKER_QUERY_SECONDS=2`; the receiver announces a location at most every "
        "5 s; a triggered run stays 20 s after its last write. Cold start: once every run "
        "has left, the next 12 h of mail; the first webhook of each campaign, which must "
        "start a run.", "",
        *md_table(["mode", "stream events", "measured", "p50 s", "p95 s", "max s",
                   "no note", "apply flow runs", "burst webhooks", "burst webhooks/s",
                   "burst to all written s", "429s", "exact"],
                  [_mode_rows(o) for o in outs]),
    ]
    rep.data = {"modes": [{k: v for k, v in o.items() if k != "latencies"} for o in outs]}
    finish(rep, args, started, [NAME, *argv])
    return rep


if __name__ == "__main__":
    main(sys.argv[1:])
