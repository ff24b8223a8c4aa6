"""The daily reconciliation: the ledger's report as artifacts, optionally verified."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from prefect import flow, unmapped
from pydantic import Field

from flows._common import RunFailed, collect, task_runner
from mailsync.store.models import utcnow
from mailsync.store.runs import Scope
from tasks.artifacts import publish
from tasks.reconcile import locations, report, verify_location


@flow(name="reconcile", task_runner=task_runner(), persist_result=False,
      description="Report every write that was rejected or missed; optionally verify.")
def reconcile(
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
    config_path = config_path or None  # type: ignore[assignment]  # "" from the UI: not set
    verified: list[Any] = []
    errors: list[str] = []
    if verify:
        locs = locations(config_path)
        checks = verify_location.map(unmapped(config_path), locs, since=since, fix=fix)
        verified, errors = collect(checks, locs, Scope.location)
    # Published here, in the flow's body, so the artifacts are the flow run's own.
    out = publish(report(config_path, since, verified))
    if errors:
        raise RunFailed(errors)
    return out
