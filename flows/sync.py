"""The scheduled sync: fetch and plan every campaign, then apply every location."""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, unmapped
from pydantic import Field

from flows._common import collect, finish, in_thread, task_runner
from mailsync.store.runs import RunError, Scope
from mailsync.sync.heap import frozen_heap
from tasks.artifacts import RunArtifacts
from tasks.sync import apply_location, begin_run, fetch_and_plan, finish_run


@flow(name="sync-campaigns", task_runner=task_runner(), persist_result=False,
      description="Fetch new Postalytics events and write them to HighLevel as tags and notes.")
async def sync_campaigns(
    campaigns: list[str] = [],  # noqa: B006 (never mutated; the UI shows an empty list)
    dry_run: bool = False,
    lookback_hours: Annotated[float, Field(ge=0)] = 0,
    max_pages: Annotated[int, Field(ge=0)] = 0,
    config_path: str = "",
    lease_wait_seconds: Annotated[float, Field(ge=0)] = 0.0,
) -> dict[str, Any]:
    """One schedule tick: one task per campaign to fetch and plan, one per location to apply.

    Args:
        campaigns: Drop ids to sync; empty means every configured campaign.
        dry_run: Fetch and plan only: record what would be written, write nothing.
        lookback_hours: Re-read events this many hours behind the newest stored one;
            0 means each campaign's setting (lookback_hours in the config, default 72).
        max_pages: Page cap per campaign for this run; 0 means each campaign's setting
            (max_pages in the config, default 200).
        config_path: Config file on the worker; empty means $MAILSYNC_CONFIG.
        lease_wait_seconds: How long to wait for a location another worker is applying
            before leaving its rows to the next run.
    """
    artifacts, errors = await in_thread(_sync, campaigns, dry_run, lookback_hours, max_pages,
                                        config_path, lease_wait_seconds)
    return await finish(artifacts, errors)


def _sync(campaigns: list[str], dry_run: bool, lookback_hours: float, max_pages: int,
          config_path: str, lease_wait_seconds: float
          ) -> tuple[RunArtifacts, list[RunError]]:
    # The UI's form sends 0 and "" for "not set": the library's None.
    config_path, lookback, pages = config_path or None, lookback_hours or None, max_pages or None
    with frozen_heap():  # what the worker held before the run is not rescanned
        plan = begin_run(config_path, "sync", campaigns, dry_run)
        fetches = fetch_and_plan.map(unmapped(config_path), plan.drop_ids, unmapped(plan.run_id),
                                     dry_run=dry_run, lookback_hours=lookback,
                                     max_pages=pages)
        fetched, errors = collect(fetches, plan.drop_ids, Scope.campaign)
        applied: list[Any] = []
        if not dry_run:
            # Every location is applied even if one of its campaigns failed to fetch: rows
            # planned by earlier runs are still owed.
            applies = apply_location.map(unmapped(config_path), plan.locations,
                                         drop_ids=unmapped(campaigns or None),
                                         lease_wait_seconds=lease_wait_seconds)
            applied, apply_errors = collect(applies, plan.locations, Scope.location)
            errors += apply_errors
        return finish_run(config_path, plan, "sync", dry_run, fetched, applied, errors,
                          drop_ids=campaigns or None), errors
