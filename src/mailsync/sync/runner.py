"""One sync or replay run: fetch and plan every campaign, then apply every location.

The Prefect flows call the same two steps (`fetch_and_plan`, `apply`) as tasks; the CLI runs
them here in one event loop. Neither knows about the other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import httpx
from sqlmodel import Session

from mailsync.clients.auth import AuthError
from mailsync.clients.postalytics import PostalyticsError
from mailsync.config import CampaignConfig, ConfigError
from mailsync.redact import redact
from mailsync.store.leases import worker_identity
from mailsync.store.ledger import REPLAY_STATUSES, SYNC_STATUSES
from mailsync.store.models import SyncRun, WriteStatus, utcnow
from mailsync.store.runs import ErrorKind, RunError, Scope
from mailsync.sync.apply import ApplyOptions, ApplyResult, apply_location
from mailsync.sync.context import SyncContext
from mailsync.sync.fetch import CampaignResult, fetch_campaign

log = logging.getLogger("mailsync.sync")



def run_error(scope: Scope, target: str, exc: BaseException) -> RunError:
    """The typed record of the exception that stopped `target`."""
    kind = ErrorKind.internal
    if isinstance(exc, AuthError):
        kind = ErrorKind.credentials
    elif isinstance(exc, ConfigError):
        kind = ErrorKind.config
    elif isinstance(exc, httpx.TransportError) or getattr(exc, "unreachable", False):
        kind = ErrorKind.unreachable
    elif isinstance(exc, PostalyticsError):
        kind = ErrorKind.remote
    status = getattr(exc, "http_status", None)
    return RunError(scope, target, kind, redact(str(exc) or type(exc).__name__),
                    status if isinstance(status, int) else None)


@dataclass
class RunSummary:
    """What a run did, per campaign and per location."""

    run_id: str
    kind: str
    dry_run: bool = False
    campaigns: list[CampaignResult] = field(default_factory=list)
    locations: list[ApplyResult] = field(default_factory=list)
    errors: list[RunError] = field(default_factory=list)

    def outcome_totals(self) -> dict[str, int]:
        """Rows per final status over all locations."""
        out: dict[str, int] = {}
        for loc in self.locations:
            for k, v in loc.outcomes.items():
                out[k] = out.get(k, 0) + v
        return out

    def to_json(self) -> str:
        """The summary as JSON, for the run's row and artifacts."""
        return json.dumps(asdict(self), default=str)


def new_run_id() -> str:
    """A fresh run id."""
    return uuid.uuid4().hex[:16]


def start_run(ctx: SyncContext, kind: str, dry_run: bool = False,
              run_id: str | None = None) -> str:
    """Record a run's start; returns its id."""
    run_id = run_id or new_run_id()
    with Session(ctx.engine) as s:
        if s.get(SyncRun, run_id) is None:
            s.add(SyncRun(id=run_id, kind=kind, dry_run=dry_run))
            s.commit()
    return run_id


def finish_run(ctx: SyncContext, summary: RunSummary) -> None:
    """Record a run's end and counts."""
    with Session(ctx.engine) as s:
        run = s.get(SyncRun, summary.run_id) or SyncRun(id=summary.run_id, kind=summary.kind)
        run.finished_at = utcnow()
        run.status = "failed" if summary.errors else "completed"
        run.counts = summary.to_json()
        s.add(run)
        s.commit()


def select_campaigns(ctx: SyncContext, drop_ids: Sequence[str] | None) -> list[CampaignConfig]:
    """The configured campaigns, or the named ones (an unknown id is a ConfigError)."""
    if not drop_ids:
        return list(ctx.settings.campaigns)
    return [ctx.settings.campaign(str(d)) for d in drop_ids]


async def fetch_and_plan(ctx: SyncContext, campaign: CampaignConfig, run_id: str, *,
                         dry_run: bool = False, lookback_hours: float | None = None,
                         max_pages: int | None = None,
                         on_page: Callable[[CampaignResult], None] | None = None
                         ) -> CampaignResult:
    """Fetch one campaign's new events and plan their writes into the ledger."""
    async with ctx.postalytics() as pa:
        async def page(number: int, size: int) -> list[Any]:
            return await pa.events_page(campaign.drop_id, number, size)

        return await fetch_campaign(ctx.engine, page, campaign, run_id=run_id,
                                    lookback_hours=lookback_hours, max_pages=max_pages,
                                    dry_run=dry_run, on_page=on_page)


async def apply(ctx: SyncContext, location_id: str, opts: ApplyOptions,
                progress: Callable[[str, int], None] | None = None) -> ApplyResult:
    """Apply one location's open ledger rows."""
    async with ctx.highlevel(location_id) as hl:
        return await apply_location(ctx.engine, hl, location_id, opts, progress)


def apply_options(ctx: SyncContext, *, statuses: Sequence[str] = SYNC_STATUSES,
                  drop_ids: Sequence[str] | None = None, since: datetime | None = None,
                  reresolve: bool = False, holder: str | None = None) -> ApplyOptions:
    """Apply options from the settings (which campaigns may create missing contacts); a
    replay (`reresolve`) also retries `failed` rows however often they were tried."""
    create = frozenset(c.drop_id for c in ctx.settings.campaigns if c.create_missing_contacts)
    # Always under a lease: two processes applying one location would pace it twice and
    # could send the same note twice.
    holder = holder or worker_identity()
    return ApplyOptions(statuses=tuple(WriteStatus(s) for s in statuses), drop_ids=drop_ids,
                        since=since, max_failed_attempts=None if reresolve else
                        ApplyOptions.max_failed_attempts, reresolve=reresolve,
                        create_missing=create, holder=holder,
                        write_order=ctx.settings.highlevel.write_order)


async def run_sync(ctx: SyncContext, *, drop_ids: Sequence[str] | None = None,
                   dry_run: bool = False, lookback_hours: float | None = None,
                   max_pages: int | None = None, holder: str | None = None,
                   on_page: Callable[[CampaignResult], None] | None = None,
                   progress: Callable[[str, int], None] | None = None) -> RunSummary:
    """Fetch and plan every selected campaign, then apply every location they touch."""
    campaigns = select_campaigns(ctx, drop_ids)
    run_id = start_run(ctx, "sync", dry_run)
    summary = RunSummary(run_id, "sync", dry_run)
    results = await asyncio.gather(*(
        fetch_and_plan(ctx, c, run_id, dry_run=dry_run, lookback_hours=lookback_hours,
                       max_pages=max_pages, on_page=on_page) for c in campaigns),
        return_exceptions=True)
    for camp, res in zip(campaigns, results, strict=True):
        if isinstance(res, BaseException):
            summary.errors.append(run_error(Scope.campaign, camp.drop_id, res))
            log.error("campaign %s: fetch failed: %s", camp.drop_id, res,
                      exc_info=None if _expected(res) else res)
        else:
            summary.campaigns.append(res)
    if not dry_run:
        locations = sorted({c.location for c in campaigns})
        opts = apply_options(ctx, drop_ids=drop_ids, holder=holder)
        await _apply_all(ctx, locations, opts, summary, progress)
    finish_run(ctx, summary)
    return summary


async def run_replay(ctx: SyncContext, *, statuses: Sequence[str] = REPLAY_STATUSES,
                     drop_ids: Sequence[str] | None = None, since: datetime | None = None,
                     holder: str | None = None,
                     progress: Callable[[str, int], None] | None = None) -> RunSummary:
    """Re-resolve contacts and re-send every selected write that is not done."""
    bad = set(statuses) - set(REPLAY_STATUSES)
    if bad:
        raise ValueError(f"cannot replay status {sorted(bad)[0]!r}: "
                         f"choose from {', '.join(REPLAY_STATUSES)}")
    campaigns = select_campaigns(ctx, drop_ids)
    run_id = start_run(ctx, "replay")
    summary = RunSummary(run_id, "replay")
    opts = apply_options(ctx, statuses=statuses, drop_ids=drop_ids, since=since,
                         reresolve=True, holder=holder)
    await _apply_all(ctx, sorted({c.location for c in campaigns}), opts, summary, progress)
    finish_run(ctx, summary)
    return summary


def _expected(exc: BaseException) -> bool:
    """Failures with a clear message of their own (no traceback needed to act on them)."""
    return isinstance(exc, AuthError | PostalyticsError | ConfigError)


async def _apply_all(ctx: SyncContext, locations: list[str], opts: ApplyOptions,
                     summary: RunSummary, progress: Callable[[str, int], None] | None) -> None:
    # Locations are independent (HighLevel limits each on its own): apply them side by side.
    results = await asyncio.gather(*(apply(ctx, loc, opts, progress) for loc in locations),
                                   return_exceptions=True)
    for loc, res in zip(locations, results, strict=True):
        if isinstance(res, BaseException):
            summary.errors.append(run_error(Scope.location, loc, res))
            log.error("location %s: apply failed: %s", loc, res,
                      exc_info=None if _expected(res) else res)
        else:
            summary.locations.append(res)
