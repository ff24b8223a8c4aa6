"""The daily reconciliation: the ledger's report as artifacts, optionally verified."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from prefect import flow, unmapped
from pydantic import Field

from flows._common import collect, finish, in_thread, task_runner
from mailsync.store.models import utcnow
from mailsync.store.runs import RunError, Scope
from tasks.artifacts import RunArtifacts
from tasks.reconcile import locations, report, verify_location


@flow(name="reconcile", task_runner=task_runner(), persist_result=False,
      description="Report every write that was rejected or missed; optionally verify.")
async def reconcile(
    since_hours: Annotated[float, Field(ge=0)] = 0,
    verify: bool = False,
    fix: bool = False,
    config_path: str = "",
) -> dict[str, Any]:
    """Optionally read HighLevel back (one task per location), then publish the report.

    Args:
        since_hours: Only writes planned in the last this many hours; 0 means
            everything in the ledger.
        verify: Read back the contacts done writes touched and report drifted writes
            (tags or notes removed in HighLevel since).
        fix: With verify, re-open drifted writes so the next sync writes them again.
        config_path: Config file on the worker; empty means $MAILSYNC_CONFIG.
    """
    since = utcnow() - timedelta(hours=since_hours) if since_hours else None
    # The UI's form sends "" for "not set".
    artifacts, errors = await in_thread(_reconcile, since, verify, fix, config_path or None)
    return await finish(artifacts, errors)


def _reconcile(since: datetime | None, verify: bool, fix: bool, config_path: str | None
               ) -> tuple[RunArtifacts, list[RunError]]:
    verified: list[Any] = []
    errors: list[RunError] = []
    if verify:
        locs = locations(config_path)
        checks = verify_location.map(unmapped(config_path), locs, since=since, fix=fix)
        verified, errors = collect(checks, locs, Scope.location)
    return report(config_path, since, verified), errors
