"""Tasks that wrap the library's steps at batch granularity: one per campaign, per location.

Tasks are synchronous and run the library's coroutines with `asyncio.run`: each task gets
its own event loop in its pool thread, so HTTP clients and pacers never cross loops.
Results stay in memory (`persist_result=False`) and nothing is cached: the write ledger, not
Prefect, is the record of what was written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.exceptions import MissingContextError
from prefect.states import Failed
from prefect.tasks import Task

from mailsync.clients.auth import AuthError
from mailsync.config import ConfigError
from mailsync.store import ledger
from mailsync.store.engine import store_identity
from mailsync.store.leases import worker_identity
from mailsync.store.ledger import SYNC_STATUSES
from mailsync.store.models import utcnow
from mailsync.store.runs import RunError
from mailsync.sync import runner
from mailsync.sync.apply import ApplyOptions, ApplyResult, Stop
from mailsync.sync.context import SyncContext
from mailsync.sync.failures import describe_failure
from mailsync.sync.fetch import CampaignResult
from tasks.artifacts import RunArtifacts, progress_client, start_progress, update_progress
from tasks.context import build_context

PROGRESS_EVERY = 2.0
"""Seconds between progress artifact updates: each is one call to the Prefect API."""


def retry_unless_config(task: Task[..., Any], task_run: TaskRun, state: State) -> bool:
    """Retry transient failures; never a bad config, refused credentials or a store that
    waits for a person (read-only, full): retrying cannot fix them, and a bad token only
    hammers the API. A failure nobody planned for is retried, as before."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, AuthError | ConfigError):
        return False
    failure = describe_failure(exc) if isinstance(exc, BaseException) else None
    return failure is None or failure.transient


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The task run's logger, or the module's outside a run (a task's `.fn` in tests)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("mailsync.tasks")


P = ParamSpec("P")
R = TypeVar("R")


def one_line_failures(fn: Callable[P, R]) -> Callable[P, R | State]:
    """An expected failure ends the task as Failed with its one line as the state's message
    (and the exception as its data, for the flow's summary), not a traceback; anything
    unexpected is raised as before, traceback and all."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | State:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            failure = describe_failure(exc)
            if failure is None:
                raise
            _logger().error("%s", failure.line)
            return Failed(message=failure.line, data=exc)

    return wrapper


@dataclass
class RunPlan:
    """What a flow run will do: its run id, campaigns and the locations they write to."""

    run_id: str
    started_at: datetime
    drop_ids: list[str]
    locations: list[str]


def _plain(counts: dict[str, int]) -> dict[str, int]:
    # Status keys are StrEnums: plain strings read better in logs and flow results.
    return {str(k): v for k, v in sorted(counts.items())}


COMMON: dict[str, Any] = {"persist_result": False, "cache_policy": NO_CACHE}


@task(name="begin-run", **COMMON)
@one_line_failures
def begin_run(config_path: str | None, kind: str, campaigns: Sequence[str] | None = None,
              dry_run: bool = False) -> RunPlan:
    """Check the config, record the run's start, and list its campaigns and locations."""
    ctx = build_context(config_path)
    # Which store this run writes to is never a surprise: a relative path or a second
    # deployment would otherwise open another store silently.
    get_run_logger().info("store: %s", store_identity(ctx.settings.database.url).describe())
    chosen = runner.select_campaigns(ctx, list(campaigns) if campaigns else None)
    started = utcnow()
    run_id = runner.start_run(ctx, kind, dry_run)
    return RunPlan(run_id, started, [c.drop_id for c in chosen],
                   sorted({c.location for c in chosen}))


@task(name="fetch-and-plan", task_run_name="fetch-and-plan-{drop_id}", retries=2,
      retry_delay_seconds=[5, 30], retry_condition_fn=retry_unless_config, **COMMON)
@one_line_failures
def fetch_and_plan(config_path: str | None, drop_id: str, run_id: str, dry_run: bool = False,
                   lookback_hours: float | None = None,
                   max_pages: int | None = None) -> CampaignResult:
    """Fetch one campaign's new events and plan their writes (idempotent: safe to retry)."""
    ctx = build_context(config_path)
    campaign = ctx.settings.campaign(drop_id)
    result = asyncio.run(runner.fetch_and_plan(ctx, campaign, run_id, dry_run=dry_run,
                                               lookback_hours=lookback_hours,
                                               max_pages=max_pages))
    get_run_logger().info(
        "campaign %s: %d pages, %d events fetched, %d new, %d quarantined, %d writes planned%s",
        drop_id, result.pages, result.fetched, result.new_events, result.quarantined,
        result.planned, " (page cap hit)" if result.capped else "")
    return result


@dataclass
class _Window:
    """When a location's writes were recorded: first and last outcome, both under the lease."""

    first: datetime | None = None
    last: datetime | None = None


async def _apply_with_progress(ctx: SyncContext, location_id: str, opts: ApplyOptions,
                               total: int, artifact_id: Any,
                               window: _Window) -> ApplyResult:
    done = 0

    def progress(_location: str, n: int) -> None:
        nonlocal done
        done += n
        # Outcomes are recorded between the lease's acquisition and its release, so these
        # two times bound a span in which this holder alone wrote to the location.
        window.last = utcnow()
        window.first = window.first or window.last

    async def ticker(client: Any) -> None:
        # Updates ride the apply's own event loop, so they never block its HTTP calls.
        last = -1
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            if done != last:
                last = done
                await update_progress(artifact_id, 100.0 * done / max(total, 1), client)

    if artifact_id is None:
        return await runner.apply(ctx, location_id, opts, progress)
    # One client for the apply's updates: a client per update would open a connection and
    # ask the server for a CSRF token each time (two requests per update, not one).
    async with progress_client() as client:
        tick = asyncio.create_task(ticker(client))
        try:
            return await runner.apply(ctx, location_id, opts, progress)
        finally:
            tick.cancel()
            await asyncio.gather(tick, return_exceptions=True)
            await update_progress(artifact_id, 100.0, client)


@task(name="apply-location", task_run_name="apply-{location_id}", retries=1,
      retry_delay_seconds=10, retry_condition_fn=retry_unless_config, **COMMON)
@one_line_failures
def apply_location(config_path: str | None, location_id: str, *,
                   statuses: Sequence[str] = SYNC_STATUSES,
                   drop_ids: Sequence[str] | None = None, since: datetime | None = None,
                   reresolve: bool = False, lease_wait_seconds: float = 0.0) -> ApplyResult:
    """Apply one location's open ledger rows inside this task, holding its lease.

    The library paces the location's writes and keeps the lease renewed while it works. If
    another worker holds the lease, wait up to `lease_wait_seconds` for it, then leave the
    rows for the next run (they stay `pending` in the ledger). Re-running is safe: `done` rows
    are never selected again and `unknown` notes are settled before any re-send.
    """
    logger = get_run_logger()
    ctx = build_context(config_path)
    holder = worker_identity()
    opts = runner.apply_options(ctx, statuses=statuses, drop_ids=drop_ids, since=since,
                                reresolve=reresolve, holder=holder)
    total = ledger.count_open(ctx.engine, opts.selection(location_id))
    if total == 0:
        logger.info("location %s: nothing to apply", location_id)
        return ApplyResult(location_id)
    artifact_id = start_progress(location_id, f"Writes applied to HighLevel location "
                                              f"{location_id} ({total} open rows)")
    deadline = time.monotonic() + lease_wait_seconds
    window = _Window()
    while True:
        result = asyncio.run(_apply_with_progress(ctx, location_id, opts, total, artifact_id,
                                                  window))
        if result.stopped != Stop.lease_held_elsewhere:
            break
        if time.monotonic() >= deadline:
            logger.info("lease busy location=%s holder=%s: rows left for the next run",
                        location_id, holder)
            return result
        time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
    # One parseable line per apply: which holder wrote to which location, and when.
    logger.info("applied location=%s holder=%s first_write=%s last_write=%s calls=%d "
                "outcomes=%s", location_id, holder,
                window.first.isoformat() if window.first else "-",
                window.last.isoformat() if window.last else "-",
                result.calls, _plain(result.outcomes))
    if result.stopped:
        logger.warning("location %s stopped early: %s", location_id, result.stopped.value)
    return result


@task(name="finish-run", **COMMON)
def finish_run(config_path: str | None, plan: RunPlan, kind: str, dry_run: bool,
               campaigns: Sequence[CampaignResult], locations: Sequence[ApplyResult],
               errors: Sequence[RunError],
               drop_ids: Sequence[str] | None = None) -> RunArtifacts:
    """Record the run's end in the store and compose its summary and problem tables.

    The flow publishes them (`tasks.artifacts.publish`), so they are the flow run's own.
    """
    from tasks.report import run_artifacts

    ctx = build_context(config_path)
    summary = runner.RunSummary(plan.run_id, kind, dry_run, list(campaigns), list(locations),
                                list(errors))
    runner.finish_run(ctx, summary)
    report, artifacts = run_artifacts(ctx.engine, ctx.settings, summary, plan.started_at,
                                      plan.locations, drop_ids)
    problems = report.problems if report is not None else None
    rejected = 0 if problems is None else int((problems["status"] == "rejected").sum())
    artifacts.result = {
        "run_id": plan.run_id, "totals": _plain(summary.outcome_totals()),
        "rejected": rejected, "missed": 0 if problems is None else len(problems) - rejected,
        "problem_recipients": 0 if report is None else report.totals()["problem_recipients"],
        "errors": [str(e) for e in summary.errors]}
    return artifacts
