"""Local CPU per write, split into the HTTP client's and mailsync's own, and peak memory.

The split, measured in one run (and the same for a baseline revision when `--baseline` names
one, interleaved round by round so both see the same machine):

1. a full sync (fetch, normalise, plan, apply: `run_sync`) in a child process of its own,
   against a sandbox with every event emitted; the HighLevel calls and the Postalytics
   pages it asks for are recorded;
2. right after, in the same process (same heap, same imports), the same calls sent again
   through `HighLevelClient` (same transport, pacer and connections, from `SyncContext.highlevel`)
   to a twin sandbox (same seed, same events, nothing written yet), with no store in the
   picture: one contact's calls in order, eight contacts at a time per location, locations
   side by side, as the apply does; then the same pages through `PostalyticsClient`.

HTTP client CPU per request = (2)'s CPU / its requests, per API. mailsync's own = (1)'s CPU
− that × (1)'s requests of each API. What the HTTP stack does once per process (importing
httpcore, the TLS context) is done before (1)'s clock, as the replay never pays it. The
same split over the apply alone starts (1)'s clock at its first HighLevel call.

The split differences two CPU totals from one process a few seconds apart, so it swings with
the machine. Each round also runs one sync under py-spy (which stops it briefly at each
sample) and counts its samples in the HTTP client's code (`HTTP_CODE`) against the rest:
both parts of that ratio come from the same moments, so it swings less: the headline.

A high time scale keeps the rate limits out of the way, so the sync runs as fast as its CPU
allows. Each size also gets one sync for peak RSS (`getrusage`), which must stay flat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import (
    ROOT,
    SRC,
    Report,
    SandboxProcess,
    baseline_src,
    child_env,
    finish,
    md_table,
    parser,
    sandbox_env,
    workdir,
)

NAME = "cpu_memory"
TIME_SCALE = 0.001  # HighLevel: 100 requests per 10 ms per location; Postalytics 3,000/s
WRITE_BUDGET_MS = 100.0  # HighLevel allows one request per 100 ms per location
EVENTS_PER_CONTACT = 6.25  # the scenario's average (docs/sandbox.md: 20k → ~125k events)
SIZES = (10_000, 30_000, 100_000)
QUICK_SIZES = (500, 1_500)
SPLIT_EVENTS, QUICK_SPLIT_EVENTS = 10_000, 500
ROUNDS = 5
OWN_TARGET = 0.25  # issue 17, item 1: mailsync's own CPU ≤ a quarter of the HTTP client's
CONCURRENCY = 8  # calls an apply has in flight per location (ApplyOptions.concurrency)
MAX_PAGES = 2_000
"""Pages per campaign for this one run: the default cap (`max_pages` = 200 pages of 100)
stops a run at 20,000 events per campaign, and the next run continues; here the whole
backlog must go through one run to be measured."""
WRITE_ROUTES = ("POST /contacts/{contactId}/notes", "POST /contacts/{contactId}/tags",
                "DELETE /contacts/{contactId}/tags")
CHANGED = ("src/mailsync/sync/apply.py", "src/mailsync/store/ledger.py",
           "src/mailsync/store/ops.py", "src/mailsync/store/models.py",
           "src/mailsync/sync/resolve.py", "src/mailsync/sync/context.py",
           "src/mailsync/clients/http.py", "src/mailsync/clients/highlevel.py",
           "src/mailsync/sync/runner.py", "src/mailsync/sync/fetch.py",
           "src/mailsync/sync/match.py", "src/mailsync/sync/normalise.py",
           "src/mailsync/sync/notes.py", "src/mailsync/sync/plan.py",
           "src/mailsync/store/engine.py", "src/mailsync/store/migrations/versions",
           "src/mailsync/codes.py", "src/mailsync/store/group_commit.py")
"""What `--baseline REV` takes from REV (the files issue 17's item 1 changed); the rest of
the tree is this one's."""
PROFILE_RATE = 250  # samples per second of py-spy's profile of the sync
HTTP_CODE = ("/httpx/", "/httpcore/", "/h11/", "/anyio/", "/sniffio/", "/mailsync/clients/",
             ";_SelectorSocketTransport.")
"""A profile sample is the HTTP client's when one of its frames is in one of these: the HTTP
stack, mailsync's clients (pacing, retries, auth: what the replay sends through too), or
asyncio's socket transport (the sync's only sockets are the two APIs')."""
ENDPOINTS = {"add_tags": "tags", "remove_tags": "tags", "create_note": "notes",
             "list_notes": "notes", "get_contact": "notes", "find_contact": "",
             "upsert_contact": ""}
"""HighLevelClient's calls, and the part of a contact's work each belongs to ("": none)."""


# -- in the children ----------------------------------------------------------------------

def _record_calls(calls: list[list[Any]], first_cpu: list[float]) -> None:
    """Wrap HighLevelClient's endpoints to note each call (location, name, arguments) and
    the CPU time at the first one: where the apply starts."""
    from mailsync.clients.highlevel import HighLevelClient

    for name in ENDPOINTS:
        original = getattr(HighLevelClient, name)

        def wrapper(self: Any, *args: Any, _original: Callable[..., Any] = original,
                    _name: str = name, **kwargs: Any) -> Any:
            if not first_cpu:
                first_cpu.append(time.process_time())
            calls.append([self.location_id, _name, list(args), kwargs])
            return _original(self, *args, **kwargs)

        setattr(HighLevelClient, name, wrapper)


def _record_pages(pages: list[list[Any]]) -> None:
    """Wrap PostalyticsClient.events_page to note each page asked for (campaign, number,
    size), in order."""
    from mailsync.clients.postalytics import PostalyticsClient

    original = PostalyticsClient.events_page

    async def wrapper(self: Any, drop_id: Any, page_number: int, page_size: int = 100) -> Any:
        pages.append([str(drop_id), page_number, page_size])
        return await original(self, drop_id, page_number, page_size)

    PostalyticsClient.events_page = wrapper  # type: ignore[method-assign]


def _warm_http_stack() -> None:
    """What the HTTP stack does once per process, done before the clock: httpx imports
    httpcore (and it anyio's backend) when its first transport is built, and the clients
    share one TLS context. The replay, run after the sync, never pays it, so inside the clock
    it would count as mailsync's own."""
    import anyio._backends._asyncio  # noqa: F401
    import httpcore  # noqa: F401

    from mailsync.clients.http import tls_context

    tls_context()


def _count_statements(engine: Any, first_cpu: list[float]) -> dict[str, int]:
    """Statements and commits the sync runs, before and after its first HighLevel call."""
    from sqlalchemy import event

    seen = {"fetch_statements": 0, "fetch_commits": 0, "apply_statements": 0,
            "apply_commits": 0}

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(*_a: Any) -> None:
        seen["apply_statements" if first_cpu else "fetch_statements"] += 1

    @event.listens_for(engine, "commit")
    def _commit(*_a: Any) -> None:
        seen["apply_commits" if first_cpu else "fetch_commits"] += 1

    return seen


def child_sync(config: str, twin: str | None) -> None:
    """In the child: one sync (and, given a twin sandbox's URL, the replay of its HighLevel
    calls there, in the same process); print CPU seconds, peak RSS and counts as JSON."""
    import logging

    from mailsync.config import load_settings
    from mailsync.sync.context import SyncContext
    from mailsync.sync.runner import run_sync

    logging.basicConfig(level=logging.WARNING)
    ctx = SyncContext(load_settings(config), timeout=60)
    calls: list[list[Any]] = []
    first_cpu: list[float] = []
    counts = _count_statements(ctx.engine, first_cpu)  # the store is created first, untimed
    _warm_http_stack()
    _record_calls(calls, first_cpu)
    pages: list[list[Any]] = []
    _record_pages(pages)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu0, t0 = time.process_time(), time.perf_counter()
    summary = asyncio.run(run_sync(ctx, max_pages=MAX_PAGES))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    replay = _replay_on(config, twin, calls, pages) if twin else None
    print(json.dumps({
        "cpu_s": cpu, "wall_s": wall, "base_rss_kib": base_rss, "peak_rss_kib": usage.ru_maxrss,
        "fetch_cpu_s": (first_cpu[0] - cpu0) if first_cpu else None, **counts,
        "replay": replay, "pa_requests": len(pages),
        "events": sum(c.new_events for c in summary.campaigns),
        "planned": sum(c.planned for c in summary.campaigns),
        "outcomes": summary.outcome_totals(), "errors": [str(e) for e in summary.errors],
        "capped": any(c.capped for c in summary.campaigns),
    }))


def _units(calls: list[list[Any]]) -> dict[str, list[list[tuple[str, list[Any], dict]]]]:
    """Per location, the recorded calls as the apply made them: a contact's tag calls in
    order, its notes calls in order, each lookup alone; in the order they first came."""
    out: dict[str, dict[Any, list[tuple[str, list[Any], dict]]]] = {}
    for i, (loc, name, args, kwargs) in enumerate(calls):
        part = ENDPOINTS[name]
        key = (args[0], part) if part else i
        out.setdefault(loc, {}).setdefault(key, []).append((name, args, kwargs))
    return {loc: list(units.values()) for loc, units in out.items()}


def _replay_on(config: str, twin: str, calls: list[list[Any]],
               pages: list[list[Any]]) -> dict[str, float]:
    """Send the recorded calls again through HighLevelClient, to the twin sandbox, with no
    store in the picture, then the recorded pages through PostalyticsClient; the CPU each
    took."""
    from mailsync.clients import ratelimit
    from mailsync.config import load_settings
    from mailsync.sandbox.app import HIGHLEVEL_PREFIX, POSTALYTICS_PREFIX
    from mailsync.sync.context import SyncContext

    # The twin has the same seed (same tokens, contacts and events) and another address; its
    # pacers start cold, as the sync's did.
    settings = load_settings(config, environ={
        **os.environ, "MAILSYNC_HIGHLEVEL_URL": f"{twin}{HIGHLEVEL_PREFIX}",
        "MAILSYNC_POSTALYTICS_URL": f"{twin}{POSTALYTICS_PREFIX}"})
    ctx = SyncContext(settings, timeout=60)
    ratelimit.forget_pacers()
    units = _units(calls)

    async def location(loc: str, todo: list[list[tuple[str, list[Any], dict]]]) -> None:
        queue = deque(todo)
        async with ctx.highlevel(loc) as hl:
            async def worker() -> None:
                while queue:
                    for name, args, kwargs in queue.popleft():
                        await getattr(hl, name)(*args, **kwargs)

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

    async def replay() -> None:
        await asyncio.gather(*(location(loc, todo) for loc, todo in units.items()))

    cpu0, t0 = time.process_time(), time.perf_counter()
    asyncio.run(replay())
    out = {"cpu_s": time.process_time() - cpu0, "wall_s": time.perf_counter() - t0}
    cpu0 = time.process_time()
    asyncio.run(_replay_pages(ctx, pages))
    return {**out, "pa_cpu_s": time.process_time() - cpu0, "pa_requests": len(pages)}


async def _replay_pages(ctx: Any, pages: list[list[Any]]) -> None:
    """The recorded pages asked again, each campaign's in order, campaigns side by side and
    a client each, as the fetch asks them."""
    by_campaign: dict[str, list[tuple[int, int]]] = {}
    for drop_id, number, size in pages:
        by_campaign.setdefault(drop_id, []).append((number, size))

    async def campaign(drop_id: str, todo: list[tuple[int, int]]) -> None:
        async with ctx.postalytics() as pa:
            for number, size in todo:
                await pa.events_page(drop_id, number, size)

    await asyncio.gather(*(campaign(d, todo) for d, todo in by_campaign.items()))


# -- in the parent ------------------------------------------------------------------------

def _run_child(src: Path, *args: str, profile: Path | None = None) -> dict[str, Any]:
    """Run a child; with `profile`, under py-spy, its samples written there."""
    cmd = [sys.executable, "-m", "bench.cpu_memory", *args]
    if profile is not None:
        # Not --nonblocking: reading a running process's stacks fails on a third of the
        # samples, the HTTP stack's quick frames most, which would bias the split.
        cmd = [str(Path(sys.executable).with_name("py-spy")), "record", "--full-filenames",
               "--format", "raw", "--rate", str(PROFILE_RATE), "--output", str(profile),
               "--", *cmd]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(src), capture_output=True, text=True,
                          timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed: {proc.stderr[-3000:]}")
    # py-spy prints its own lines too: the child's is the last JSON line.
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def _sync_frame() -> str:
    """How a profile names `child_sync`'s frame while the timed `run_sync` runs."""
    lines = Path(__file__).read_text().splitlines()
    number = next(i for i, line in enumerate(lines, 1)
                  if "summary = asyncio.run(run_sync(" in line)
    return f"cpu_memory.py:{number})"


def attribute(raw: str, sync_frame: str) -> dict[str, int]:
    """Samples of the timed sync in a py-spy raw profile: the HTTP client's (`HTTP_CODE`)
    and the rest, mailsync's own (the event loop's own work included)."""
    counts = {"http_samples": 0, "own_samples": 0}
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not any(f.startswith("child_sync (") and f.endswith(sync_frame)
                   for f in stack.split(";")):
            continue
        http = any(part in stack for part in HTTP_CODE)
        counts["http_samples" if http else "own_samples"] += int(n)
    return counts


def _sandbox(events: int) -> SandboxProcess:
    contacts = max(30, round(events / EVENTS_PER_CONTACT))
    return SandboxProcess(seed=11, contacts=contacts, time_scale=TIME_SCALE, oauth_locations=0)


def sync_once(events: int, src: Path, twin: bool = False, profile: bool = False
              ) -> dict[str, Any]:
    """A sandbox with all events emitted, then the sync in its own process; with `twin`, a
    second sandbox like the first, where that process replays the sync's HighLevel calls;
    with `profile`, the sync runs under py-spy and its samples are attributed."""
    with _sandbox(events) as sb, workdir(NAME) as tmp, sandbox_env(sb.manifest(), tmp) as config, \
            (_sandbox(events) if twin else contextlib.nullcontext()) as other:
        emitted = sb.advance_all()
        if other is not None:
            other.advance_all()
            other.reset_stats()
        sb.reset_stats()
        spy = tmp / "profile.txt" if profile else None
        out = _run_child(src, "--child-sync", str(config),
                         *(["--twin", other.url] if other is not None else []), profile=spy)
        if spy is not None:
            out["profile"] = attribute(spy.read_text(), _sync_frame())
        if out["errors"] or out["capped"]:
            raise RuntimeError(f"sync reported errors: {out['errors']}")
        hl = sb.stats()["highlevel"]
        if other is not None:
            out["replay"]["hl_requests"] = highlevel_total(other)
    routes = {r: int(c["requests"]) for r, c in hl["by_route"].items()}
    return {**out, "contacts": sb.config["contacts"], "emitted": emitted,
            "hl_requests": int(hl["total"]["requests"]),
            "writes": sum(routes.get(r, 0) for r in WRITE_ROUTES), "routes": routes}


def highlevel_total(sb: SandboxProcess) -> int:
    """HighLevel requests the sandbox counted."""
    return int(sb.stats()["highlevel"]["total"]["requests"])


def split_round(events: int, src: Path) -> dict[str, Any]:
    """One sync and its replay, and one sync under the profiler; the split, per write."""
    profiled = sync_once(events, src, profile=True)["profile"]
    sync = sync_once(events, src, twin=True)
    replay = sync["replay"]
    writes = max(sync["writes"], 1)
    http_per_req = replay["cpu_s"] / max(replay["hl_requests"], 1)
    hl_http = http_per_req * sync["hl_requests"]
    pa_http = replay["pa_cpu_s"] / max(replay["pa_requests"], 1) * sync["pa_requests"]
    http = hl_http + pa_http
    apply_cpu = sync["cpu_s"] - sync["fetch_cpu_s"]
    return {"sync": sync, "replay": replay, "writes": writes,
            "http_ms_per_request": 1000 * http_per_req,
            "pa_ms_per_request": 1000 * replay["pa_cpu_s"] / max(replay["pa_requests"], 1),
            "total_ms_per_write": 1000 * sync["cpu_s"] / writes,
            "http_ms_per_write": 1000 * http / writes,
            "pa_ms_per_write": 1000 * pa_http / writes,
            "own_ms_per_write": 1000 * (sync["cpu_s"] - http) / writes,
            "apply_own_ms_per_write": 1000 * (apply_cpu - hl_http) / writes,
            "fetch_ms_per_write": 1000 * (sync["fetch_cpu_s"] - pa_http) / writes,
            "ratio": (sync["cpu_s"] - http) / http,
            "profile_ratio": profiled["own_samples"] / max(profiled["http_samples"], 1),
            "profile_samples": profiled["own_samples"] + profiled["http_samples"],
            "ratio_postalytics_as_own": (sync["cpu_s"] - hl_http) / hl_http,
            "apply_ratio": (apply_cpu - hl_http) / hl_http,
            "apply_statements_per_write": sync["apply_statements"] / writes,
            "apply_commits_per_write": sync["apply_commits"] / writes,
            "fetch_statements_per_write": sync["fetch_statements"] / writes}


def measure_split(events: int, rounds: int, baseline: str | None) -> dict[str, list[dict]]:
    """`rounds` rounds of the split, the baseline's and this tree's interleaved."""
    out: dict[str, list[dict]] = {"this tree": []}
    if baseline is None:
        for _ in range(rounds):
            out["this tree"].append(split_round(events, SRC))
        return out
    out[f"baseline {baseline}"] = []
    with baseline_src(baseline, CHANGED) as old:
        for _ in range(rounds):
            out[f"baseline {baseline}"].append(split_round(events, old))
            out["this tree"].append(split_round(events, SRC))
    return out


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def add_split(rep: Report, split: dict[str, list[dict]], events: int) -> None:
    """The split's figures (medians over rounds) and its table."""
    runs = split["this tree"]
    ratio = _median(runs, "profile_ratio")
    rep.add(f"mailsync's own CPU / the HTTP client's, full sync, {events:,} events, from "
            "py-spy's samples of the sync (the HTTP client's code against the rest, at the "
            f"same moments; median of {len(runs)})", ratio, f"≤ {OWN_TARGET}",
            ratio <= OWN_TARGET)
    rep.add("the same, from the replay (the difference of two CPU totals; swings with the "
            f"machine; median of {len(runs)})", _median(runs, "ratio"), fmt="{:.3f}")
    rep.add("the same, from the replay, apply only (fetch, normalise and plan left out)",
            _median(runs, "apply_ratio"), fmt="{:.3f}")
    rep.add("the same, from the replay, with Postalytics' client counted as mailsync's own (how "
            "this section counted until 2026-12-03)", _median(runs, "ratio_postalytics_as_own"),
            fmt="{:.3f}")
    for name, key in (("mailsync's own CPU ms per write, full sync (replay)", "own_ms_per_write"),
                      ("HTTP client CPU ms per write (HighLevel's and Postalytics')",
                       "http_ms_per_write"),
                      ("of which Postalytics' client", "pa_ms_per_write"),
                      ("CPU ms per write, full sync", "total_ms_per_write")):
        rep.add(name, _median(runs, key), fmt="{:.3f} ms")
    rows = []
    for variant, items in split.items():
        for i, r in enumerate(items, 1):
            rows.append([variant, i, f"{r['writes']:,}", f"{r['sync']['hl_requests']:,}",
                         f"{r['replay']['hl_requests']:,}", f"{r['sync']['pa_requests']:,}",
                         f"{r['total_ms_per_write']:.3f}", f"{r['http_ms_per_request']:.3f}",
                         f"{r['pa_ms_per_request']:.3f}", f"{r['http_ms_per_write']:.3f}",
                         f"{r['own_ms_per_write']:.3f}", f"{r['fetch_ms_per_write']:.3f}",
                         f"{r['apply_own_ms_per_write']:.3f}", f"{r['ratio']:.3f}",
                         f"{r['profile_ratio']:.3f} ({r['profile_samples']:,})",
                         f"{r['apply_ratio']:.3f}", f"{r['apply_statements_per_write']:.2f}",
                         f"{r['apply_commits_per_write']:.3f}"])
    http = [r["http_ms_per_request"] for r in runs]
    replayed = [r["ratio"] for r in runs]
    sampled = [r["profile_ratio"] for r in runs]
    rep.details += [
        f"The replay's CPU per request ranged from {min(http):.3f} to {max(http):.3f} ms over "
        "this tree's rounds, and mailsync's own is the difference of two CPU totals, so "
        f"own/HTTP from the replay ranged from {min(replayed):.3f} to {max(replayed):.3f}. "
        "py-spy's ratio, both parts sampled at the same moments, ranged from "
        f"{min(sampled):.3f} to {max(sampled):.3f}: it is the headline.", ""]
    rep.details += md_table(
        ["code", "round", "writes", "HL requests (sync)", "HL requests (replay)",
         "PA pages", "CPU ms/write", "HL ms/request", "PA ms/page", "HTTP ms/write",
         "own ms/write",
         "of which fetch+plan ms/write", "own ms/write, apply", "own/HTTP",
         "own/HTTP, profile (samples)", "own/HTTP, apply",
         "apply statements/write", "apply commits/write"], rows)


def add_where(rep: Report, split: dict[str, list[dict]]) -> None:
    """Where mailsync's own time per write goes, from this tree's medians."""
    runs = split["this tree"]
    own, fetch = _median(runs, "own_ms_per_write"), _median(runs, "fetch_ms_per_write")
    apply_own = _median(runs, "apply_own_ms_per_write")
    target = OWN_TARGET * _median(runs, "http_ms_per_write")
    rep.details += [
        f"**Where mailsync's own {own:.3f} ms per write goes** (medians): fetch, normalise "
        f"and plan {fetch:.3f} ms, {100 * fetch / own:.0f} %: per "
        "event a `MailEvent` and its ledger rows, each note's text, the rows inserted "
        "in multi-row INSERTs; the apply's own (resolve, pacing, outcomes, "
        f"the ledger, commits, its tasks) {apply_own:.3f} ms, with "
        f"{_median(runs, 'apply_statements_per_write'):.2f} statements and "
        f"{_median(runs, 'apply_commits_per_write'):.3f} commits per write. The target, "
        f"{OWN_TARGET} × the HTTP client's, is {target:.3f} ms"
        + ("; the apply's own part alone is above it." if apply_own > target else "."), ""]


def add_baseline(rep: Report, split: dict[str, list[dict]]) -> None:
    """The baseline's figures beside this tree's, from the same run."""
    base = next((v for k, v in split.items() if k != "this tree"), None)
    if not base:
        return
    runs = split["this tree"]
    rep.add("baseline: mailsync's own CPU / the HTTP client's, full sync, from py-spy's "
            "samples", _median(base, "profile_ratio"), fmt="{:.3f}")
    rep.add("baseline: the same, from the replay", _median(base, "ratio"), fmt="{:.3f}")
    rep.add("baseline: the same, from the replay, apply only", _median(base, "apply_ratio"),
            fmt="{:.3f}")
    rep.add("own/HTTP from py-spy's samples: this tree / baseline",
            _median(runs, "profile_ratio") / _median(base, "profile_ratio"), fmt="{:.2f}×")
    for name, key in (("mailsync's own CPU per write, full sync (replay)", "own_ms_per_write"),
                      ("the same, apply only (replay)", "apply_own_ms_per_write"),
                      ("HTTP client CPU per request", "http_ms_per_request"),
                      ("CPU per write, full sync", "total_ms_per_write")):
        rep.add(f"{name}: this tree / baseline", _median(runs, key) / _median(base, key),
                fmt="{:.2f}×")


def add_sizes(rep: Report, results: list[dict[str, Any]]) -> None:
    """CPU per write and peak memory at each size."""
    small, big = results[0], results[-1]
    per_write = 1000 * big["cpu_s"] / max(big["writes"], 1)
    rep.add(f"CPU ms per write at {big['events']:,} events", per_write,
            f"< {0.05 * WRITE_BUDGET_MS:.0f} ms (5 % of 100 ms)",
            per_write < 0.05 * WRITE_BUDGET_MS, fmt="{:.2f} ms")
    ratio = big["peak_rss_kib"] / small["peak_rss_kib"]
    rep.add(f"peak RSS at {big['events']:,} events / at {small['events']:,}", ratio,
            "< 1.5 (flat)", ratio < 1.5, fmt="{:.2f}×")
    # In MiB, not as a ratio: at the small size the peak can be the RSS before the sync.
    growth = (big["peak_rss_kib"] - big["base_rss_kib"]) / 1024
    rep.add(f"growth during the sync at {big['events']:,} events (peak − RSS before), MiB",
            growth, fmt="{:.0f}")
    rows = [[f"{r['events']:,}", f"{r['contacts']:,}", f"{r['writes']:,}",
             f"{r['hl_requests']:,}", f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}",
             f"{1000 * r['cpu_s'] / max(r['writes'], 1):.2f}",
             f"{1000 * r['cpu_s'] / max(r['events'], 1):.2f}",
             f"{(r['fetch_statements'] + r['apply_statements']) / max(r['writes'], 1):.2f}",
             f"{r['base_rss_kib'] / 1024:.0f}", f"{r['peak_rss_kib'] / 1024:.0f}"]
            for r in results]
    rep.details += [
        f"**Sizes**: one sync per size for CPU per write at scale and peak RSS; each run is "
        f"given `max_pages` = {MAX_PAGES} so the whole backlog goes through one run (the "
        "default cap, 200 pages of 100 per campaign, would stop it at 20,000 events per "
        "campaign).", ""]
    rep.details += md_table(["events", "recipients", "writes", "HighLevel requests", "wall s",
                             "CPU s", "CPU ms/write", "CPU ms/event", "statements/write",
                             "RSS before sync MiB", "peak RSS MiB"], rows)


def build_report(split: dict[str, list[dict]], sizes: list[dict[str, Any]], events: int,
                 quick: bool, baseline: str | None) -> Report:
    """The section's figures and text from the measurements."""
    rep = Report(NAME, "3. Local CPU per write: the HTTP client's and mailsync's own; "
                 "peak memory", quick)
    add_split(rep, split, events)
    add_where(rep, split)
    add_baseline(rep, split)
    add_sizes(rep, sizes)
    rep.details[:0] = [
        f"Sandbox seed 11, 3 campaigns, 3 locations, time scale {TIME_SCALE} (Postalytics "
        f"{3 / TIME_SCALE:.0f} requests/s, HighLevel 100 per {10 * TIME_SCALE * 1000:.0f} ms "
        "per location): every event emitted before the sync; store on SQLite in a temp dir. "
        "CPU = `time.process_time()` of the child process (user + system), the sandbox "
        "running in another. Writes = note and tag calls the sandbox counted.", "",
        "**The split**: each round is (1) one `run_sync` in a fresh child, its "
        "HighLevel calls and Postalytics pages recorded, and (2) right after, in the same "
        "process, the same calls sent again through `HighLevelClient` (same transport, pacer "
        "and connections, from `SyncContext.highlevel`) to a twin sandbox (same seed, nothing "
        f"written yet), one contact's calls in order, {CONCURRENCY} contacts at a time per "
        "location, with no store at all; then the same pages asked again through "
        "`PostalyticsClient`, each campaign's in order, campaigns side by side. HTTP client "
        "CPU per request = (2)'s CPU / its requests, for each API; mailsync's own = (1)'s "
        "CPU − that × (1)'s requests, so own is fetch, normalise, plan, the ledger and the "
        "apply. Before (1)'s clock starts, the store is created and the HTTP stack does what "
        "it does once per process (httpx imports httpcore with its first transport; the "
        "TLS context): the replay, run after the sync, never pays that. Until 2026-12-03 "
        "this section counted Postalytics' client and that one-time work as mailsync's "
        "own: the ratio with Postalytics' client counted as own is given above (the "
        "one-time work is now outside the clock either way). **The profile**: each round also "
        f"runs one more sync (same sizes, its own sandbox) under py-spy, {PROFILE_RATE} "
        "samples a second (each stops it for a moment, so its CPU is not the other "
        "figures'); a sample of the timed sync is the HTTP client's when one of its "
        "frames is in httpx, httpcore, h11, anyio, sniffio, "
        "`mailsync/clients/` or asyncio's socket transport, and mailsync's own otherwise "
        "(the event loop's own work included). Its ratio does not swing with the machine, "
        "as both parts are sampled at the same moments. `apply` starts (1)'s clock at "
        "its first HighLevel call. The headline figures are medians over rounds"
        + (f"; the baseline (`{baseline}`: this tree with {', '.join(CHANGED)} as they "
           "were there) ran interleaved with this tree, round by round."
           if baseline else "."), "",
    ]
    return rep


def main(argv: list[str]) -> Report:
    """Run the benchmark; returns its report (also printed and written)."""
    p = parser(NAME, __doc__)
    p.add_argument("--baseline", metavar="REV", default=None,
                   help="also measure the split with the item-1 files as they were at REV")
    p.add_argument("--rounds", type=int, default=None, help=f"split rounds (default {ROUNDS})")
    p.add_argument("--child-sync", help=argparse.SUPPRESS)
    p.add_argument("--twin", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_sync:
        child_sync(args.child_sync, args.twin)
        return Report(NAME, "", False)
    started = time.monotonic()
    events = QUICK_SPLIT_EVENTS if args.quick else SPLIT_EVENTS
    rounds = args.rounds or (1 if args.quick else ROUNDS)
    split = measure_split(events, rounds, args.baseline)
    sizes = [sync_once(n, SRC) for n in (QUICK_SIZES if args.quick else SIZES)]
    rep = build_report(split, sizes, events, args.quick, args.baseline)
    rep.data = {"split": split, "sizes": sizes}
    finish(rep, args, started, [NAME, *argv])
    return rep


if __name__ == "__main__":
    main(sys.argv[1:])
