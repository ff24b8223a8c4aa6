"""Reconciliation tasks: the library's report over the ledger, and its HighLevel read-back."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from prefect import get_run_logger, task

from mailsync.report import verify as lib
from mailsync.report.build import build_report
from mailsync.report.model import DriftFinding
from mailsync.report.render import markdown_summary
from tasks.artifacts import publish_markdown, publish_table
from tasks.context import build_context
from tasks.sync import COMMON, retry_unless_config


@task(name="reconcile-locations", **COMMON)
def locations(config_path: str | None) -> list[str]:
    """The configured locations (the verify fan-out)."""
    return [loc.id for loc in build_context(config_path).settings.locations]


@task(name="verify-location", task_run_name="verify-{location_id}", retries=1,
      retry_delay_seconds=10, retry_condition_fn=retry_unless_config, **COMMON)
def verify_location(config_path: str | None, location_id: str, since: datetime | None = None,
                    fix: bool = False) -> lib.VerifyResult:
    """Read back from HighLevel the contacts one location's done writes touched.

    Reads count against the location's rate limit too, so the library holds the location's
    lease for the check; a busy location is skipped (and says so) rather than waited for.
    """
    logger = get_run_logger()
    ctx = build_context(config_path)
    drops = [c.drop_id for c in ctx.settings.campaigns if c.location == location_id]
    if not drops:
        return lib.VerifyResult()
    # The library holds the location's lease while it reads (a busy location is an error).
    result = asyncio.run(lib.verify(ctx, since=since, drop_ids=drops, fix=fix))
    logger.info("location %s: %d contacts read back, %d drifted writes, %d re-opened",
                location_id, result.contacts_checked, len(result.drift), result.fixed)
    return result


@task(name="reconcile-report", **COMMON)
def report(config_path: str | None, since: datetime | None = None,
           verified: Sequence[lib.VerifyResult] = ()) -> dict[str, Any]:
    """Publish the reconciliation summary and the tables of rejected and missed writes."""
    ctx = build_context(config_path)
    drift: list[DriftFinding] = [d for v in verified for d in v.drift]
    rep = build_report(ctx.engine, since=since, drift=drift)
    problems = rep.problem_records()
    rejected = [p for p in problems if p.get("status") == "rejected"]
    missed = [p for p in problems if p.get("status") != "rejected"]
    markdown = markdown_summary(rep)
    if verified:
        checked = sum(v.contacts_checked for v in verified)
        errors = [e for v in verified for e in v.errors]
        markdown += (f"\n## Verify\n\n{checked} contacts read back from HighLevel; "
                     f"{len(drift)} done writes drifted"
                     f"{f', {sum(v.fixed for v in verified)} re-opened' if drift else ''}.\n")
        markdown += "".join(f"- {e}\n" for e in errors)
    publish_markdown("mailsync-reconcile-summary", markdown, "Reconciliation of the write ledger")
    publish_table("mailsync-reconcile-rejected-writes", rejected,
                  "Writes HighLevel rejected: fix the cause, then run mailsync-replay")
    publish_table("mailsync-reconcile-missed-writes", missed,
                  "Writes not (or no longer) in HighLevel: failed, unknown, overdue or drifted")
    return {"totals": rep.totals(), "rejected": len(rejected), "missed": len(missed),
            "drift": len(drift)}
