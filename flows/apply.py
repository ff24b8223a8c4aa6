"""Write given locations' planned rows now: what a webhook's Prefect event runs.

The `mailsync-apply` deployment (prefect.yaml) has a trigger on the receiver's event
(`mailsync.location.writes-planned`), with the location taken from the event's resource.
Each location is applied as the scheduled sync applies it (the same `runner.apply`, under
the same lease, so the two never write one location at once), and the run stays while
webhooks keep coming (`tasks.webhook_events.apply_and_stay`): a flow run takes seconds to
start, so one run serves a stream rather than one run per few webhooks.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, unmapped
from pydantic import Field

from flows._common import RunFailed, collect, in_thread, task_runner
from mailsync.store.runs import RunError, Scope
from tasks.webhook_events import LINGER_SECONDS, apply_and_stay


@flow(name="apply-locations", task_runner=task_runner(), persist_result=False,
      description="Write the planned rows of the given HighLevel locations now.")
async def apply_locations(
    locations: Annotated[list[str], Field(min_length=1)],
    config_path: str = "",
    lease_wait_seconds: Annotated[float, Field(ge=0)] = 60.0,
    linger_seconds: Annotated[float, Field(ge=0)] = LINGER_SECONDS,
) -> dict[str, Any]:
    """One task per location applies its waiting ledger rows (all campaigns), and again as
    more arrive, until none came for `linger_seconds`.

    Args:
        locations: HighLevel location ids (the webhook receiver's event names one).
        config_path: Config file on the worker; empty means $MAILSYNC_CONFIG.
        lease_wait_seconds: How long to wait for a location another run is applying (the
            scheduled sync, or the apply of an earlier event) before leaving its rows to
            the next run.
        linger_seconds: How long to stay after the last write for more webhooks' writes.
    """
    wanted = sorted(set(locations))
    # The UI's form sends "" for "not set".
    applied, errors = await in_thread(_apply, wanted, config_path or None, linger_seconds,
                                      lease_wait_seconds)
    out = {"locations": {r["location_id"]: r for r in applied},
           "errors": [str(e) for e in errors]}
    if errors:
        raise RunFailed(errors)
    return out


def _apply(wanted: list[str], config_path: str | None, linger_seconds: float,
           lease_wait_seconds: float) -> tuple[list[Any], list[RunError]]:
    applies = apply_and_stay.map(unmapped(config_path), wanted,
                                 linger_seconds=linger_seconds,
                                 lease_wait_seconds=lease_wait_seconds)
    return collect(applies, wanted, Scope.location)
