"""A campaign's fetch bookmark, kept in its `campaigns` row: the cursor and where a capped
walk stopped.

The cursor (`newest_event_at`) moves only when a walk over the events list completes (it
reached the list's end, or a page all stored before whose oldest event is older than the
cursor minus the lookback). Then every event the list held when the walk began is stored, so
a later walk may stop at such a page: an event below it is stored, or arrived later dated
before the lookback. A walk that crashes or hits its page cap leaves the cursor where it was,
and the next walk reads down to the same place again (what it stored is known, and stored
once); `resume_offset` lets it skip the top a capped walk already covered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, func, select

from mailsync.store.models import Campaign, MailEvent, utcnow
from mailsync.store.ops import insert_ignore


@dataclass(frozen=True)
class Bookmark:
    """Where a campaign's fetch stands."""

    newest_event_at: datetime | None = None
    """The newest event stored when the last complete walk ended: the cursor."""
    resume_offset: int | None = None
    """Events from the top that a walk stopped by its page cap had covered."""

    def cutoff(self, lookback: timedelta) -> datetime | None:
        """Events older than this are settled (None before the first complete walk)."""
        return None if self.newest_event_at is None else self.newest_event_at - lookback


def _row(session: Session, campaign: Campaign) -> Campaign:
    row = session.get(Campaign, campaign.drop_id)
    if row is None:
        insert_ignore(session, [campaign])
        row = session.get(Campaign, campaign.drop_id)
        assert row is not None
    return row


def load_bookmark(session: Session, campaign: Campaign) -> Bookmark:
    """The campaign's bookmark; its row (`campaign`, not attached) is created on first sight."""
    row = _row(session, campaign)
    return Bookmark(row.newest_event_at, row.resume_offset)


def save_bookmark(session: Session, campaign: Campaign, *, complete: bool,
                  resume_offset: int | None = None) -> Bookmark:
    """Record a walk's end in the session: a complete walk moves the cursor to the newest event
    stored and clears the resume offset; an incomplete one keeps the cursor and saves where it
    stopped."""
    row = _row(session, campaign)
    row.last_fetched_at = utcnow()
    if complete:
        newest = session.exec(select(func.max(MailEvent.event_at))
                              .where(MailEvent.drop_id == campaign.drop_id)).one()
        if newest is not None and (row.newest_event_at is None or newest > row.newest_event_at):
            row.newest_event_at = newest
        row.resume_offset = None
    else:
        row.resume_offset = resume_offset
    session.add(row)
    return Bookmark(row.newest_event_at, row.resume_offset)
