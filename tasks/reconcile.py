"""Reconciliation tasks: the library's report over the ledger, and its HighLevel read-back."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from prefect import get_run_logger, task

from mailsync.redact import redact
from mailsync.report import verify as lib
from mailsync.report.build import build_report
from mailsync.report.model import DriftFinding
from mailsync.report.names import postalytics_names
from mailsync.report.render import markdown_summary
from mailsync.report.safe import md_text
from mailsync.sync.context import SyncContext
from tasks.artifacts import MarkdownArtifact, RunArtifacts
from tasks.context import build_context
from tasks.report import problem_tables
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


async def _postalytics_names(ctx: SyncContext) -> dict[str, str]:
    """Postalytics' names of the campaigns the config leaves unnamed (none: no request)."""
    unnamed = [c.drop_id for c in ctx.settings.campaigns if not c.name]
    if not unnamed:
        return {}
    try:
        async with ctx.postalytics() as pa:
            return await postalytics_names(pa, unnamed)
    except Exception as exc:  # a name is a convenience: never fail the report over one
        get_run_logger().warning("campaign names not read from Postalytics: %s", redact(exc))
        return {}


def _verify_markdown(verified: Sequence[lib.VerifyResult], drift: int) -> str:
    checked = sum(v.contacts_checked for v in verified)
    errors = [e for v in verified for e in v.errors]
    fixed = f", {sum(v.fixed for v in verified)} re-opened" if drift else ""
    return (f"\n## Verify\n\n{checked} contacts read back from HighLevel; {drift} done writes "
            f"drifted{fixed}.\n" + "".join(f"- {md_text(e)}\n" for e in errors))


@task(name="reconcile-report", **COMMON)
def report(config_path: str | None, since: datetime | None = None,
           verified: Sequence[lib.VerifyResult] = ()) -> RunArtifacts:
    """Compose the reconciliation summary and the grouped problem tables (the flow
    publishes them, so they are the flow run's)."""
    ctx = build_context(config_path)
    drift: list[DriftFinding] = [d for v in verified for d in v.drift]
    rep = build_report(ctx.engine, since=since, drift=drift, settings=ctx.settings,
                       postalytics_names=asyncio.run(_postalytics_names(ctx)))
    markdown = markdown_summary(rep)
    if verified:
        markdown += _verify_markdown(verified, len(drift))
    rejected = int((rep.problems["status"] == "rejected").sum()) if len(rep.problems) else 0
    return RunArtifacts(
        result={"totals": rep.totals(), "rejected": rejected,
                "missed": len(rep.problems) - rejected, "drift": len(drift)},
        markdown=[MarkdownArtifact("mailsync-reconcile-summary", markdown,
                                   "Reconciliation of the write ledger")],
        tables=problem_tables(rep, "mailsync-reconcile", "in the ledger"))
