"""`mailsync settle`: read every contact's notes again and mark the planned ones already there.

For a store restored from an older backup: it believes contacts it wrote to after the backup
are new to it, or that notes sent since are still to send. Settling forgets which contacts
this store had read, then reads, under the location's lease, the notes of every contact with
a note not done, and marks done each one whose marker is there; contacts it does not reach
now are read again before their next note.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailsync.clients.highlevel import HighLevelClient
from mailsync.config import ConfigError
from mailsync.store import ledger
from mailsync.store.leases import hold_lease, worker_identity
from mailsync.store.models import WriteIntent, WriteKind, WriteStatus
from mailsync.sync.context import SyncContext
from mailsync.sync.notes import already_there


@dataclass
class SettleResult:
    """What settling one location found."""

    location_id: str
    contacts_read: int = 0
    notes_found: int = 0
    """Notes planned but not done that HighLevel already had: now done, never sent again."""
    unreadable: list[str] = field(default_factory=list)
    """Contacts whose notes could not be read now: read before their next note instead."""
    lease_held_elsewhere: bool = False


def _open_notes(engine: Engine, location_id: str,
                drop_ids: Sequence[str] | None) -> dict[str, list[WriteIntent]]:
    q = select(WriteIntent).where(WriteIntent.location_id == location_id,
                                  WriteIntent.kind == WriteKind.note,
                                  WriteIntent.status != WriteStatus.done,
                                  col(WriteIntent.contact_id).is_not(None))
    if drop_ids:
        q = q.where(col(WriteIntent.drop_id).in_(list(drop_ids)))
    by_contact: dict[str, list[WriteIntent]] = defaultdict(list)
    with Session(engine) as s:
        for note in s.exec(q).all():
            by_contact[note.contact_id or ""].append(note)
    return by_contact


async def settle_location(engine: Engine, hl: HighLevelClient, location_id: str,
                          drop_ids: Sequence[str] | None = None,
                          concurrency: int = 8) -> SettleResult:
    """Settle one location's contacts (of some campaigns, or all) against HighLevel."""
    result = SettleResult(location_id)
    async with hold_lease(engine, location_id, worker_identity()) as lease:
        if lease is None:
            result.lease_held_elsewhere = True
            return result
        ledger.forget_settled(engine, location_id, drop_ids)
        sem = asyncio.Semaphore(concurrency)

        async def one(contact_id: str, notes: list[WriteIntent]) -> None:
            async with sem:
                if lease.lost:
                    return
                listing = await hl.list_notes(contact_id)
            if listing.status != "ok":
                result.unreadable.append(contact_id)
                return
            result.contacts_read += 1
            for note in notes:
                remote_id = already_there(listing.data, note.marker or "")
                if remote_id is not None:
                    ledger.mark(engine, [note.id], WriteStatus.done, remote_id=remote_id)
                    result.notes_found += 1
            ledger.mark_settled(engine, location_id, contact_id)

        await asyncio.gather(*(one(c, n) for c, n in
                               _open_notes(engine, location_id, drop_ids).items()))
    return result


async def run_settle(ctx: SyncContext, *, location_ids: Sequence[str] | None = None,
                     drop_ids: Sequence[str] | None = None) -> list[SettleResult]:
    """Settle the named locations (default: every location of the selected campaigns)."""
    campaigns = [ctx.settings.campaign(d) for d in drop_ids] if drop_ids else \
        list(ctx.settings.campaigns)
    chosen = list(location_ids) if location_ids else sorted({c.location for c in campaigns})
    known = [loc.id for loc in ctx.settings.locations]
    for loc in chosen:
        if loc not in known:  # before any work
            raise ConfigError(f"--location: {loc!r} is not a configured location "
                              f"(configured: {', '.join(known) or 'none'})")

    async def one(location_id: str) -> SettleResult:
        async with ctx.highlevel(location_id) as hl:
            return await settle_location(ctx.engine, hl, location_id, drop_ids)

    return list(await asyncio.gather(*(one(loc) for loc in chosen)))
