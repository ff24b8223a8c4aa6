"""The daily reconciliation: the ledger's report as artifacts, optionally read back."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from prefect import flow, unmapped
from pydantic import Field

from flows._common import collect, task_runner
from mailsync.store.models import utcnow
from tasks.reconcile import report, verify_location, verify_report


@flow(name="reconcile", task_runner=task_runner(), persist_result=False,
      description="Report every write that was rejected or missed; optionally verify.")
def reconcile(
    since_hours: Annotated[float | None, Field(gt=0)] = None,
    verify: bool = False,
    verify_contacts: Annotated[int, Field(ge=1, le=1000)] = 50,
    config_path: str | None = None,
) -> dict[str, Any]:
    """Build the report; with `verify`, one read-back task per location.

    Args:
        since_hours: Only writes updated in the last this many hours; empty means
            everything in the ledger.
        verify: Also read a sample of done writes back from HighLevel (read-only).
        verify_contacts: Contacts per location read back when verifying.
        config_path: Config file on the worker; empty means $MAILSYNC_CONFIG.
    """
    since = utcnow() - timedelta(hours=since_hours) if since_hours else None
    out = report(config_path, since)
    if verify:
        checks = verify_location.map(unmapped(config_path), out["locations"], since=since,
                                     contacts=verify_contacts)
        results, errors = collect(checks, out["locations"], "verify")
        out["verify"] = verify_report(results)
        if errors:
            raise RuntimeError("; ".join(errors))
    return out
