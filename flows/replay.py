"""Manual replay: re-resolve and re-send the writes that are not done, after a fix."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from prefect import flow, unmapped
from pydantic import Field, WithJsonSchema

from flows._common import collect, finish, in_thread, task_runner
from mailsync.store.runs import RunError, Scope
from mailsync.sync.runner import REPLAY_STATUSES
from tasks.artifacts import RunArtifacts
from tasks.sync import apply_location, begin_run, finish_run

ReplayStatus = Literal["pending", "rejected", "failed", "unknown"]


@flow(name="replay", task_runner=task_runner(), persist_result=False,
      description="Re-send every selected write that is not done (after fixing the cause).")
async def replay(
    statuses: Annotated[list[ReplayStatus], Field(min_length=1)] = list(REPLAY_STATUSES),  # noqa: B006
    campaigns: list[str] = [],  # noqa: B006 (never mutated; the UI shows an empty list)
    since: Annotated[datetime | None, WithJsonSchema(
        {"type": "string", "format": "date-time", "title": "since"})] = None,
    config_path: str = "",
    lease_wait_seconds: Annotated[float, Field(ge=0)] = 120.0,
) -> dict[str, Any]:
    """One task per location re-resolves contacts and re-sends its selected writes.

    Args:
        statuses: Ledger statuses to re-send.
        campaigns: Only these drop ids; empty means every configured campaign.
        since: Only writes planned at or after this time (UTC if no zone is given);
            empty means every write.
        config_path: Config file on the worker; empty means $MAILSYNC_CONFIG.
        lease_wait_seconds: How long to wait for a location a scheduled sync is applying.
    """
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    # The UI's form sends "" for "not set".
    artifacts, errors = await in_thread(_replay, list(statuses), campaigns, since,
                                        config_path or None, lease_wait_seconds)
    return await finish(artifacts, errors)


def _replay(statuses: list[str], campaigns: list[str], since: datetime | None,
            config_path: str | None, lease_wait_seconds: float
            ) -> tuple[RunArtifacts, list[RunError]]:
    plan = begin_run(config_path, "replay", campaigns)
    applies = apply_location.map(unmapped(config_path), plan.locations,
                                 statuses=unmapped(list(statuses)),
                                 drop_ids=unmapped(campaigns or None), since=since,
                                 reresolve=True, lease_wait_seconds=lease_wait_seconds)
    applied, errors = collect(applies, plan.locations, Scope.location)
    return finish_run(config_path, plan, "replay", False, [], applied, errors,
                      drop_ids=campaigns or None), errors
