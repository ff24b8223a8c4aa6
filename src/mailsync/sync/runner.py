"""One sync or replay run: fetch and plan every campaign, then apply every location.

The Prefect flows call the same two steps (`fetch_and_plan`, `apply`) as tasks; the CLI runs
them here in one event loop. Neither knows about the other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, func, select

from mailsync.config import CampaignConfig
from mailsync.store import ledger
from mailsync.store.leases import worker_identity
from mailsync.store.ledger import REPLAY_STATUSES, SYNC_STATUSES
from mailsync.store.models import (
    MailEvent,
    SyncRun,
    WriteIntent,
    WriteKind,
    WriteStatus,
    utcnow,
)
from mailsync.store.reasons import Reason
from mailsync.store.runs import ErrorKind, RunError, Scope
from mailsync.sync.apply import ApplyOptions, ApplyResult, apply_location
from mailsync.sync.context import SyncContext
from mailsync.sync.failures import (
    FailureKind,
    RemoteProblem,
    describe_failure,
    unexpected_line,
)
from mailsync.sync.fetch import CampaignResult, fetch_campaign
from mailsync.sync.heap import frozen_heap

log = logging.getLogger("mailsync.sync")

_KIND_OF = {FailureKind.config: ErrorKind.config, FailureKind.store: ErrorKind.store}
_REMOTE_KIND = {RemoteProblem.unreachable: ErrorKind.unreachable,
                RemoteProblem.credentials: ErrorKind.credentials,
                RemoteProblem.other: ErrorKind.remote}


def run_error(scope: Scope, target: str, exc: BaseException) -> RunError:
    """The typed record of the exception that stopped `target`: its kind, and the one line
    that says what failed and what to do (the same line the CLI and Prefect show)."""
    failure = describe_failure(exc)
    status = getattr(exc, "http_status", None)
    status = status if isinstance(status, int) else None
    if failure is None:
        return RunError(scope, target, ErrorKind.internal, unexpected_line(exc), status)
    kind = _KIND_OF.get(failure.kind) or _REMOTE_KIND[failure.remote or RemoteProblem.other]
    return RunError(scope, target, kind, failure.line, status)


@dataclass(frozen=True)
class ErrorGroup:
    """Run errors that say the same thing (one API down stops every campaign alike): told
    once, with every campaign or location it stopped."""

    scope: Scope
    kind: ErrorKind
    message: str
    targets: tuple[str, ...]


def grouped_errors(errors: Sequence[RunError]) -> list[ErrorGroup]:
    """The run's errors, one group per distinct message, in first-seen order."""
    groups: dict[tuple[Scope, ErrorKind, str], list[str]] = {}
    for err in errors:
        groups.setdefault((err.scope, err.kind, err.message), []).append(err.target)
    return [ErrorGroup(scope, kind, message, tuple(targets))
            for (scope, kind, message), targets in groups.items()]


@dataclass(frozen=True)
class PlannedWrite:
    """One write a dry run would make, as a person reads it."""

    drop_id: str
    location_id: str
    kind: str
    code: str
    recipient: str
    email: str | None
    text: str
    """The tag, or the note's first line."""


@dataclass
class DryRunPlan:
    """What a dry run would write: the first rows, and counts by campaign, code and kind."""

    sample_size: int = 20
    sample: list[PlannedWrite] = field(default_factory=list)
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def add(self, rows: Sequence[WriteIntent], events: Sequence[MailEvent]) -> None:
        """Take one page's planned rows (`fetch_campaign`'s `on_plan`)."""
        by_key = {e.key: e for e in events}
        for row in rows:
            self.counts[(row.drop_id, row.code, row.kind)] += 1
            if len(self.sample) < self.sample_size:
                self.sample.append(_planned(row, by_key.get(row.event_key or "")))

    @property
    def total(self) -> int:
        """Every write the run would make."""
        return sum(self.counts.values())


def _planned(row: WriteIntent, event: MailEvent | None) -> PlannedWrite:
    who = " ".join(p for p in (event.first_name, event.last_name) if p) if event else ""
    first = (row.tag if row.kind != WriteKind.note else (row.body or "").split("\n", 1)[0]) or ""
    return PlannedWrite(row.drop_id, row.location_id, row.kind, row.code,
                        who or row.recipient_key, event.email if event else None, first)


@dataclass
class RunSummary:
    """What a run did, per campaign and per location."""

    run_id: str
    kind: str
    dry_run: bool = False
    campaigns: list[CampaignResult] = field(default_factory=list)
    locations: list[ApplyResult] = field(default_factory=list)
    errors: list[RunError] = field(default_factory=list)
    plan: DryRunPlan | None = None
    """What a dry run would write (only a dry run collects it)."""

    def outcome_totals(self) -> dict[str, int]:
        """Rows per final status over all locations."""
        out: dict[str, int] = {}
        for loc in self.locations:
            for k, v in loc.outcomes.items():
                out[k] = out.get(k, 0) + v
        return out

    def to_json(self) -> str:
        """The summary as JSON, for the run's row and artifacts."""
        data = asdict(self)
        data.pop("plan", None)  # the rows a dry run rolled back: not a record of the run
        return json.dumps(data, default=str)


@dataclass(frozen=True)
class UnansweredWrites:
    """Writes of a location that got no answer in a run, grouped by why (one line each)."""

    location_id: str
    reason: str
    writes: int


def unanswered_writes(ctx: SyncContext, since: datetime,
                      locations: Sequence[str]) -> list[UnansweredWrites]:
    """Writes of these locations left failed or pending since `since` because HighLevel did
    not answer (unreachable, 5xx): so one API down is told once per reason, not per row."""
    if not locations:
        return []
    with Session(ctx.engine) as s:
        rows = s.exec(select(WriteIntent.location_id, WriteIntent.reason, func.count())
                      .where(col(WriteIntent.location_id).in_(list(locations)),
                             col(WriteIntent.reason_code).in_([Reason.unanswered,
                                                               Reason.lookup_unanswered]),
                             col(WriteIntent.updated_at) >= since)
                      .group_by(WriteIntent.location_id, WriteIntent.reason)).all()
    return [UnansweredWrites(loc, reason or "no answer", int(n)) for loc, reason, n in rows]


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
                         on_page: Callable[[CampaignResult], None] | None = None,
                         plan: DryRunPlan | None = None) -> CampaignResult:
    """Fetch one campaign's new events and plan their writes into the ledger (`plan`
    collects what was planned, for a dry run to show)."""
    async with ctx.postalytics() as pa:
        async def page(number: int, size: int) -> list[Any]:
            return await pa.events_page(campaign.drop_id, number, size)

        return await fetch_campaign(ctx.engine, page, campaign, run_id=run_id,
                                    lookback_hours=lookback_hours, max_pages=max_pages,
                                    dry_run=dry_run, on_page=on_page,
                                    on_plan=plan.add if plan is not None else None)


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


@dataclass
class RunHooks:
    """What a caller (the CLI's progress) is told while a run works; all optional."""

    on_page: Callable[[CampaignResult], None] | None = None
    """After each page a campaign's fetch stored."""
    on_apply: Callable[[str, int], None] | None = None
    """Before a location's apply starts: its id and how many rows it will look at."""
    progress: Callable[[str, int], None] | None = None
    """After rows of a location got their outcome: its id and how many."""


async def run_sync(ctx: SyncContext, *, drop_ids: Sequence[str] | None = None,
                   dry_run: bool = False, lookback_hours: float | None = None,
                   max_pages: int | None = None, holder: str | None = None,
                   on_page: Callable[[CampaignResult], None] | None = None,
                   progress: Callable[[str, int], None] | None = None,
                   hooks: RunHooks | None = None) -> RunSummary:
    """Fetch and plan every selected campaign, then apply every location they touch."""
    with frozen_heap():
        return await _run_sync(ctx, drop_ids, dry_run, lookback_hours, max_pages, holder,
                               hooks or RunHooks(on_page=on_page, progress=progress))


async def _run_sync(ctx: SyncContext, drop_ids: Sequence[str] | None, dry_run: bool,
                    lookback_hours: float | None, max_pages: int | None, holder: str | None,
                    hooks: RunHooks) -> RunSummary:
    campaigns = select_campaigns(ctx, drop_ids)
    run_id = start_run(ctx, "sync", dry_run)
    summary = RunSummary(run_id, "sync", dry_run, plan=DryRunPlan() if dry_run else None)
    results = await asyncio.gather(*(
        fetch_and_plan(ctx, c, run_id, dry_run=dry_run, lookback_hours=lookback_hours,
                       max_pages=max_pages, on_page=hooks.on_page, plan=summary.plan)
        for c in campaigns), return_exceptions=True)
    for camp, res in zip(campaigns, results, strict=True):
        if isinstance(res, BaseException):
            _record_error(summary, Scope.campaign, camp.drop_id, res)
        else:
            summary.campaigns.append(res)
    if not dry_run:
        locations = sorted({c.location for c in campaigns})
        opts = apply_options(ctx, drop_ids=drop_ids, holder=holder)
        await _apply_all(ctx, locations, opts, summary, hooks)
    finish_run(ctx, summary)
    return summary


async def run_replay(ctx: SyncContext, *, statuses: Sequence[str] = REPLAY_STATUSES,
                     drop_ids: Sequence[str] | None = None, since: datetime | None = None,
                     holder: str | None = None,
                     progress: Callable[[str, int], None] | None = None,
                     hooks: RunHooks | None = None) -> RunSummary:
    """Re-resolve contacts and re-send every selected write that is not done."""
    hooks = hooks or RunHooks(progress=progress)
    bad = set(statuses) - set(REPLAY_STATUSES)
    if bad:
        raise ValueError(f"cannot replay status {sorted(bad)[0]!r}: "
                         f"choose from {', '.join(REPLAY_STATUSES)}")
    campaigns = select_campaigns(ctx, drop_ids)
    run_id = start_run(ctx, "replay")
    summary = RunSummary(run_id, "replay")
    opts = apply_options(ctx, statuses=statuses, drop_ids=drop_ids, since=since,
                         reresolve=True, holder=holder)
    with frozen_heap():
        await _apply_all(ctx, sorted({c.location for c in campaigns}), opts, summary, hooks)
    finish_run(ctx, summary)
    return summary


def _record_error(summary: RunSummary, scope: Scope, target: str, exc: BaseException) -> None:
    """Keep the error in the summary (whoever runs the run shows it, once); the traceback
    goes to the debug log only, for `--debug`."""
    err = run_error(scope, target, exc)
    summary.errors.append(err)
    log.info("%s %s stopped: %s", scope, target, err.message)
    log.debug("%s %s: traceback", scope, target, exc_info=exc)


async def _apply_all(ctx: SyncContext, locations: list[str], opts: ApplyOptions,
                     summary: RunSummary, hooks: RunHooks) -> None:
    if hooks.on_apply is not None:
        # Counted before any apply starts: counted later, rows already settled would be
        # missing from the total while their outcomes still arrive (a bar past its end).
        for loc in locations:
            hooks.on_apply(loc, ledger.count_open(ctx.engine, opts.selection(loc)))
    # Locations are independent (HighLevel limits each on its own): apply them side by side.
    results = await asyncio.gather(*(apply(ctx, loc, opts, hooks.progress)
                                     for loc in locations), return_exceptions=True)
    for loc, res in zip(locations, results, strict=True):
        if isinstance(res, BaseException):
            _record_error(summary, Scope.location, loc, res)
        else:
            summary.locations.append(res)
