"""Reconciliation tasks: the report over the ledger, and an optional read-back from HighLevel."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime
from typing import Any

from prefect import get_run_logger, task
from sqlmodel import Session, col, select

from mailsync.codes import tag_key
from mailsync.store.leases import acquire_lease, release_lease, worker_identity
from mailsync.store.models import WriteIntent, WriteKind, WriteStatus
from mailsync.sync.context import SyncContext
from mailsync.sync.notes import has_marker
from tasks.artifacts import publish_markdown, publish_table
from tasks.context import build_context
from tasks.sync import COMMON, retry_unless_config


@task(name="reconcile-report", **COMMON)
def report(config_path: str | None, since: datetime | None = None) -> dict[str, Any]:
    """Publish the reconciliation summary and the tables of rejected and missed writes."""
    from tasks.report import problem_rows, reconcile_markdown

    ctx = build_context(config_path)
    rejected, missed = problem_rows(ctx.engine, since=since)
    publish_markdown("mailsync-reconcile-summary",
                     reconcile_markdown(ctx.engine, len(rejected), len(missed), since),
                     "Reconciliation of the write ledger")
    publish_table("mailsync-reconcile-rejected-writes", rejected,
                  "Writes HighLevel rejected: fix the cause, then run mailsync-replay")
    publish_table("mailsync-reconcile-missed-writes", missed,
                  "Writes not confirmed (failed, unknown or deferred): the next sync or a "
                  "replay retries them")
    return {"rejected": len(rejected), "missed": len(missed),
            "locations": [loc.id for loc in ctx.settings.locations]}


def _sample(ctx: SyncContext, location_id: str, since: datetime | None,
            contacts: int) -> dict[str, list[WriteIntent]]:
    with Session(ctx.engine) as s:
        q = select(WriteIntent).where(
            WriteIntent.location_id == location_id, WriteIntent.status == WriteStatus.done,
            col(WriteIntent.kind).in_([WriteKind.tag, WriteKind.note]),
            col(WriteIntent.contact_id).is_not(None))
        if since is not None:
            q = q.where(WriteIntent.updated_at >= since)
        rows = list(s.exec(q).all())
    by_contact: dict[str, list[WriteIntent]] = {}
    for r in rows:
        by_contact.setdefault(r.contact_id or "", []).append(r)
    keys = sorted(by_contact)
    chosen = random.Random(location_id).sample(keys, min(contacts, len(keys)))
    return {k: by_contact[k] for k in chosen}


async def _check(ctx: SyncContext, location_id: str,
                 sample: dict[str, list[WriteIntent]]) -> list[dict[str, Any]]:
    bad: list[dict[str, Any]] = []
    async with ctx.highlevel(location_id) as hl:
        for contact_id, rows in sample.items():
            contact = await hl.get_contact(contact_id)
            notes = await hl.list_notes(contact_id)
            tags = {tag_key(str(t)) for t in ((contact.data or {}).get("tags") or [])} \
                if isinstance(contact.data, dict) else set()
            bodies = [str(n.get("body") or "") for n in (notes.data or [])
                      if isinstance(n, dict)]
            for r in rows:
                if r.kind == WriteKind.tag and contact.ok:
                    found = tag_key(r.tag or "") in tags
                elif r.kind == WriteKind.note and notes.ok:
                    found = any(has_marker(b, r.marker or "") for b in bodies)
                else:
                    found = False
                if not found:
                    ok = contact.ok if r.kind == WriteKind.tag else notes.ok
                    bad.append({"id": r.id, "location_id": location_id,
                                "drop_id": r.drop_id, "contact_id": contact_id,
                                "kind": r.kind, "tag": r.tag, "marker": r.marker,
                                "problem": "not found on the contact" if ok
                                else "HighLevel did not answer the read"})
    return bad


@task(name="verify-location", task_run_name="verify-{location_id}", retries=1,
      retry_delay_seconds=10, retry_condition_fn=retry_unless_config, **COMMON)
def verify_location(config_path: str | None, location_id: str, since: datetime | None = None,
                    contacts: int = 50) -> dict[str, Any]:
    """Read a sample of `done` writes back from HighLevel (tags and notes); read-only.

    Reads count against the location's rate limit too, so the location's lease is held
    for the check: a sync applying the location at the same time is never out-paced.
    """
    logger = get_run_logger()
    ctx = build_context(config_path)
    holder = worker_identity()
    if not acquire_lease(ctx.engine, location_id, holder):
        logger.info("location %s is being applied elsewhere: verify skipped", location_id)
        return {"location_id": location_id, "checked": 0, "mismatches": [], "skipped": True}
    try:
        sample = _sample(ctx, location_id, since, contacts)
        bad = asyncio.run(_check(ctx, location_id, sample))
    finally:
        release_lease(ctx.engine, location_id, holder)
    checked = sum(len(v) for v in sample.values())
    logger.info("location %s: %d done writes on %d contacts read back, %d not found",
                location_id, checked, len(sample), len(bad))
    return {"location_id": location_id, "checked": checked, "mismatches": bad,
            "skipped": False}


@task(name="verify-report", **COMMON)
def verify_report(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One table of the writes the ledger calls done but HighLevel does not show."""
    bad = [m for r in results for m in r["mismatches"]]
    checked = sum(r["checked"] for r in results)
    skipped = [r["location_id"] for r in results if r.get("skipped")]
    desc = f"{len(bad)} of {checked} done writes not found in HighLevel"
    if skipped:
        desc += f"; skipped (busy): {', '.join(skipped)}"
    publish_table("mailsync-verify-mismatches", bad, desc)
    return {"checked": checked, "mismatches": len(bad), "skipped": skipped}
