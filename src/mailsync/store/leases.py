"""Location leases: one worker applies a location's writes at a time, so its pacing holds.

A lease expires unless renewed; a dead worker's lease is taken over once it has expired.
Each acquire or renew is one conditional UPDATE (or INSERT), atomic on both databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import case, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailsync.store.models import LocationLease, utcnow
from mailsync.store.ops import insert_ignore

log = logging.getLogger("mailsync.leases")

DEFAULT_TTL = timedelta(seconds=90)


def worker_identity() -> str:
    """A name for this process that is unique across machines and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def acquire_lease(engine: Engine, location_id: str, holder: str,
                  ttl: timedelta = DEFAULT_TTL) -> bool:
    """Take or renew the location's lease; False when another live holder has it."""
    now = utcnow()
    with Session(engine) as s:
        result = s.execute(
            update(LocationLease)
            .where(LocationLease.location_id == location_id)  # type: ignore[arg-type]
            .where(or_(LocationLease.holder == holder,  # type: ignore[arg-type]
                       LocationLease.expires_at < now))  # type: ignore[arg-type]
            .values(holder=holder, expires_at=now + ttl,
                    acquired_at=case((LocationLease.holder == holder,  # type: ignore[arg-type]
                                      LocationLease.acquired_at), else_=now))
        )
        if result.rowcount == 1:
            s.commit()
            return True
        got = insert_ignore(s, [LocationLease(location_id=location_id, holder=holder,
                                              expires_at=now + ttl, acquired_at=now)])
        s.commit()
        if got:
            return True
        # A holder on this machine whose process is gone (killed, crashed) cannot renew:
        # take its lease now rather than leave the location idle until it expires.
        lease = s.get(LocationLease, location_id)
        if lease is None or not _dead_here(lease.holder):
            return False
        result = s.execute(
            update(LocationLease)
            .where(LocationLease.location_id == location_id)  # type: ignore[arg-type]
            .where(LocationLease.holder == lease.holder)  # type: ignore[arg-type]
            .values(holder=holder, expires_at=now + ttl, acquired_at=now)
        )
        s.commit()
        return result.rowcount == 1


def _dead_here(holder: str) -> bool:
    """Whether a holder names a process on this machine that no longer runs."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False


def release_lease(engine: Engine, location_id: str, holder: str) -> None:
    """Give the lease up early so another worker need not wait for it to expire."""
    with Session(engine) as s:
        s.execute(
            update(LocationLease)
            .where(LocationLease.location_id == location_id)  # type: ignore[arg-type]
            .where(LocationLease.holder == holder)  # type: ignore[arg-type]
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        s.commit()


def lease_holder(engine: Engine, location_id: str) -> str | None:
    """Who holds the location's lease now, if anyone."""
    with Session(engine) as s:
        lease = s.exec(select(LocationLease).where(
            LocationLease.location_id == location_id)).first()
        if lease is None or lease.expires_at < utcnow():
            return None
        return lease.holder


@dataclass
class HeldLease:
    """A lease being held; `lost` turns true if a renewal finds another holder."""

    location_id: str
    holder: str
    lost: bool = False


@asynccontextmanager
async def hold_lease(engine: Engine, location_id: str, holder: str,
                     ttl: timedelta = DEFAULT_TTL) -> AsyncIterator[HeldLease | None]:
    """Hold the location's lease for the block, renewing it every third of its life.

    Yields None (and holds nothing) when another live holder has it. Work inside should
    stop soon after `lost` turns true.
    """
    if not acquire_lease(engine, location_id, holder, ttl):
        yield None
        return
    lease = HeldLease(location_id, holder)

    async def renew() -> None:
        while True:
            await asyncio.sleep(ttl.total_seconds() / 3)
            if not acquire_lease(engine, location_id, holder, ttl):
                lease.lost = True
                log.warning("location %s: lease lost to another worker", location_id)
                return

    keeper = asyncio.create_task(renew())
    try:
        yield lease
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        if not lease.lost:
            release_lease(engine, location_id, holder)
