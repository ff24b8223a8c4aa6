"""One event whichever way it came: webhook and events endpoint meet on the match key.

An event may be stored first from a webhook (key `w:<match key>`, no event id, no DataId)
or first from the events endpoint (key `e:<drop>:<EventId>`). The `mail_events.match_key`
column is unique, so insert-if-new skips the second arrival on both databases whichever
came first. Three things follow, here:

- a webhook event takes the recipient key already stored for its mail piece (`mailId`), or
  for its carried contact id, in its campaign (so tags, contact links and the report see one
  recipient). Never for its name and zip: two people of one name in one zip look alike, and
  the webhook has nothing else. A piece the store has never seen, with nothing to find its
  contact by (no carried id, email or phone), gets an *unidentified* key and no writes until
  the poll reads who it is (`RecipientKind.unidentified`);
- when the poll reads an event a webhook stored first, the webhook's row learns the key the
  poll knows it by (`poll_key`), so later walks see it as stored and an id reused with other
  content is still caught;
- an unidentified webhook event whose own event the poll reads takes the poll's recipient
  (DataId, email, phone, name), and so do the other unidentified events of its piece; their
  writes are planned then.

All of it runs in the caller's transaction (a fetch page, one webhook).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from mailsync.config import CampaignConfig
from mailsync.store.models import EventSource, MailEvent, WriteIntent, detached
from mailsync.store.ops import insert_ignore, rows_where_in
from mailsync.sync.normalise import RecipientKind, recipient_kind, unidentified_recipient
from mailsync.sync.plan import plan_writes

_CHUNK = 500
"""Keys per IN (...) query."""


@dataclass(frozen=True)
class Twin:
    """A stored event with the match key of one being stored."""

    key: str
    source: EventSource
    poll_key: str | None


def _with(event: MailEvent, **fields: object) -> MailEvent:
    """A copy of a detached row with some fields changed (it takes no attribute writes)."""
    return detached(MailEvent, **{**event.model_dump(), **fields})


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start:start + _CHUNK]


_EVENTS = MailEvent.__table__  # type: ignore[attr-defined]


def stored_twins(session: Session, match_keys: Iterable[str | None]) -> dict[str, Twin]:
    """The stored event of each match key, if any."""
    keys = sorted({k for k in match_keys if k})
    rows = rows_where_in(session.connection(), _EVENTS,
                         ("match_key", "key", "source", "poll_key"), "match_key", keys)
    return {m: Twin(k, EventSource(s), p) for m, k, s, p in rows if m}


@dataclass(frozen=True)
class ReadBefore:
    """A webhook's row whose event the poll has read before, under its REST key."""

    code: str
    event_at: datetime
    recipient_key: str
    match_key: str | None

    def identity_for(self, served: MailEvent) -> tuple[str, datetime, str]:
        """(code, time, recipient) as `served` must show them to be this same event: the
        webhook's row has its own recipient key and may differ below the second, so those
        two are taken from `served` when the match keys agree."""
        same_second = (self.event_at.replace(microsecond=0)
                       == served.event_at.replace(microsecond=0))
        at = served.event_at if same_second else self.event_at
        who = served.recipient_key if served.match_key == self.match_key else self.recipient_key
        return (self.code, at, who)


def read_before(session: Session, keys: Sequence[str]) -> dict[str, ReadBefore]:
    """REST event keys the poll has read before on a webhook's row (its `poll_key`)."""
    rows = rows_where_in(session.connection(), _EVENTS,
                         ("poll_key", "code", "event_at", "recipient_key", "match_key"),
                         "poll_key", keys)
    return {p: ReadBefore(c, at, r, m) for p, c, at, r, m in rows if p}


# -- the poll's side --------------------------------------------------------------------------

@dataclass
class PollMatch:
    """What the poll's events met among stored ones."""

    fresh: list[tuple[object, MailEvent]] = field(default_factory=list)
    """Events to insert (those of them sharing a second with another event lost their match
    key: the webhook of such an event cannot be told apart from its neighbour's)."""
    absorbed: list[MailEvent] = field(default_factory=list)
    """Events a webhook stored first: now known by their REST key too."""
    rows: list[str] = field(default_factory=list)
    """The stored key of each absorbed event's row (the webhook's), in the same order."""


def sort_polled(session: Session, items: Sequence[tuple[object, MailEvent]]) -> PollMatch:
    """Split a page's events not stored under their own key: new ones, and those a webhook
    stored first (their rows learn the REST key here)."""
    twins = stored_twins(session, (e.match_key for _, e in items))
    out = PollMatch()
    claimed: set[str] = set()
    for raw, event in items:
        twin = twins.get(event.match_key or "")
        if (twin is not None and twin.source == EventSource.webhook and twin.poll_key is None
                and twin.key not in claimed):
            claimed.add(twin.key)
            # What only the events endpoint says (the visited URL, the expected delivery)
            # fills the webhook's row: a note not planned yet (its person waits) gets it.
            session.execute(update(MailEvent).where(col(MailEvent.key) == twin.key)
                            .where(col(MailEvent.poll_key).is_(None))
                            .values(poll_key=event.key,
                                    url=func.coalesce(col(MailEvent.url), event.url),
                                    expected_delivery=func.coalesce(
                                        col(MailEvent.expected_delivery),
                                        event.expected_delivery)))
            out.absorbed.append(event)
            out.rows.append(twin.key)
            continue
        if twin is not None or (event.match_key and event.match_key in claimed):
            # Another event of this person, code and second is stored: a second visit within
            # the second. Stored without a match key so the unique index lets it in.
            event = _with(event, match_key=None)
        elif event.match_key:
            claimed.add(event.match_key)
        out.fresh.append((raw, event))
    return out


_DETAILS = ("email", "phone", "first_name", "last_name", "carried_contact_id")


def _identified(row: MailEvent, polled: MailEvent) -> dict[str, object]:
    """A waiting row's fields once the poll has said who it is."""
    fields: dict[str, object] = {"recipient_key": polled.recipient_key}
    for name in _DETAILS:
        fields[name] = getattr(row, name) or getattr(polled, name)
    return fields


def _waiting(session: Session, drop_id: str, keys: Sequence[str],
             pieces: Sequence[str]) -> list[MailEvent]:
    """The unidentified rows among these keys, and those of these pieces."""
    out: dict[str, MailEvent] = {}
    for part in _chunks(list(keys)):
        for row in session.exec(select(MailEvent).where(col(MailEvent.key).in_(part))).all():
            out[row.key] = row
    for part in _chunks(list(pieces)):
        for row in session.exec(select(MailEvent).where(
                MailEvent.drop_id == drop_id, col(MailEvent.piece_id).in_(part))).all():
            out[row.key] = row
    return [r for r in out.values()
            if recipient_kind(r.recipient_key) == RecipientKind.unidentified]


def identify_waiting(session: Session, campaign: CampaignConfig, matched: PollMatch,
                     run_id: str | None) -> tuple[list[MailEvent], list[WriteIntent]]:
    """Webhook events that waited for the poll to say who their person is: each absorbed
    row by its own polled event, and the other waiting rows of its piece by the same; they
    take the poll's recipient and their writes are planned now. Returns the events
    identified and the ledger rows inserted."""
    by_row = dict(zip(matched.rows, matched.absorbed, strict=True))
    if not by_row:
        return [], []
    rows = {r.key: r for r in session.exec(select(MailEvent).where(
        col(MailEvent.key).in_(list(by_row)))).all()}
    by_piece = {rows[k].piece_id: polled for k, polled in by_row.items()
                if k in rows and rows[k].piece_id}
    identified: list[MailEvent] = []
    for row in _waiting(session, campaign.drop_id, list(by_row), list(by_piece)):
        polled = by_row.get(row.key) or by_piece[row.piece_id]
        fields = _identified(row, polled)
        session.execute(update(MailEvent).where(col(MailEvent.key) == row.key).values(**fields))
        identified.append(detached(MailEvent, **{**row.model_dump(), **fields}))
    planned = plan_writes(identified, campaign, run_id)
    inserted = set(insert_ignore(session, planned, returning="intent_key"))
    return identified, [r for r in planned if r.intent_key in inserted]


# -- the webhook's side -----------------------------------------------------------------------

class Arrival(StrEnum):
    """What storing one webhook event did."""

    stored = "stored"
    """New: stored, its writes planned (if its code is selected)."""
    awaiting_poll = "awaiting_poll"
    """New, but nothing names the person's contact yet: writes wait for the poll."""
    duplicate = "duplicate"
    """Already stored (a redelivery, or the poll read it first): nothing written again."""


@dataclass(frozen=True)
class WebhookStored:
    """The outcome of storing one webhook event."""

    arrival: Arrival
    event_key: str
    planned: int = 0


def recipient_for(session: Session, event: MailEvent) -> str | None:
    """The recipient key already stored for the webhook's piece, else for its carried
    contact id, in its campaign (Postalytics' DataId first); None when there is none."""
    for column, value in ((MailEvent.piece_id, event.piece_id),
                          (MailEvent.person_key, event.person_key
                           if event.carried_contact_id else None)):
        if not value:
            continue
        keys = session.exec(select(MailEvent.recipient_key).where(
            MailEvent.drop_id == event.drop_id, col(column) == value).distinct()).all()
        known = sorted(k for k in keys if recipient_kind(k) != RecipientKind.unidentified)
        if known:
            return known[0]
    return None


def store_webhook_event(session: Session, event: MailEvent, campaign: CampaignConfig,
                        received_at: datetime) -> WebhookStored:
    """Insert one webhook event if new, with the ledger rows it causes, in the session's
    transaction; a second arrival of a stored event only records when its webhook came."""
    adopted = recipient_for(session, event)
    waits = False
    recipient = event.recipient_key
    if adopted is not None:
        recipient = adopted
    elif not (event.carried_contact_id or event.email or event.phone):
        assert event.person_key is not None  # normalise refuses a webhook without one
        recipient = unidentified_recipient(event.piece_id or event.person_key)
        waits = True
    event = _with(event, recipient_key=recipient, source=EventSource.webhook,
                  received_at=received_at)
    if not insert_ignore(session, [event]):
        same = (col(MailEvent.match_key) == event.match_key if event.match_key
                else col(MailEvent.key) == event.key)
        # The event is stored (the poll got it first, or this is a redelivery): record when
        # its webhook came, and its piece, so the piece's next webhooks know their recipient.
        session.execute(update(MailEvent).where(same).values(
            received_at=func.coalesce(col(MailEvent.received_at), received_at),
            piece_id=func.coalesce(col(MailEvent.piece_id), event.piece_id)))
        return WebhookStored(Arrival.duplicate, event.key)
    if waits:
        return WebhookStored(Arrival.awaiting_poll, event.key)
    rows = plan_writes([event], campaign, None)
    planned = insert_ignore(session, rows, returning="intent_key")
    return WebhookStored(Arrival.stored, event.key, len(planned))
