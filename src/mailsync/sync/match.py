"""One event whichever way it came: webhook and events endpoint meet on the match key.

An event may be stored first from a webhook (key `w:<match key>`, no event id, no DataId)
or first from the events endpoint (key `e:<drop>:<EventId>`). The `mail_events.match_key`
column is unique, so insert-if-new skips the second arrival on both databases whichever
came first. Three things follow, here:

- a webhook event takes the recipient key already stored for the same person in its
  campaign (so tags, contact links and the report see one recipient); a person the store
  has never seen, with nothing to find their contact by, gets an *unidentified* key and no
  writes until the poll reads who it is (`RecipientKind.unidentified`);
- when the poll reads an event a webhook stored first, the webhook's row learns the key the
  poll knows it by (`poll_key`), so later walks see it as stored and an id reused with other
  content is still caught;
- when the poll reads any event of a person whose webhook events are unidentified, those
  events take the poll's recipient (and its email, phone, name) and their writes are planned.

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
from mailsync.store.ops import insert_ignore
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


def stored_twins(session: Session, match_keys: Iterable[str | None]) -> dict[str, Twin]:
    """The stored event of each match key, if any."""
    keys = sorted({k for k in match_keys if k})
    out: dict[str, Twin] = {}
    for part in _chunks(keys):
        rows = session.exec(select(MailEvent.match_key, MailEvent.key, MailEvent.source,
                                   MailEvent.poll_key)
                            .where(col(MailEvent.match_key).in_(part))).all()
        out.update({m: Twin(k, EventSource(s), p) for m, k, s, p in rows if m})
    return out


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
    out: dict[str, ReadBefore] = {}
    for part in _chunks(keys):
        rows = session.exec(select(MailEvent.poll_key, MailEvent.code, MailEvent.event_at,
                                   MailEvent.recipient_key, MailEvent.match_key)
                            .where(col(MailEvent.poll_key).in_(part))).all()
        out.update({p: ReadBefore(c, at, r, m) for p, c, at, r, m in rows if p})
    return out


# -- the poll's side --------------------------------------------------------------------------

@dataclass
class PollMatch:
    """What the poll's events met among stored ones."""

    fresh: list[tuple[object, MailEvent]] = field(default_factory=list)
    """Events to insert (those of them sharing a second with another event lost their match
    key: the webhook of such an event cannot be told apart from its neighbour's)."""
    absorbed: list[MailEvent] = field(default_factory=list)
    """Events a webhook stored first: now known by their REST key too."""


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
            continue
        if twin is not None or (event.match_key and event.match_key in claimed):
            # Another event of this person, code and second is stored: a second visit within
            # the second. Stored without a match key so the unique index lets it in.
            event = _with(event, match_key=None)
        elif event.match_key:
            claimed.add(event.match_key)
        out.fresh.append((raw, event))
    return out


def identify_waiting(session: Session, campaign: CampaignConfig, polled: Iterable[MailEvent],
                     run_id: str | None) -> tuple[list[MailEvent], list[WriteIntent]]:
    """Webhook events of the polled events' people that waited for the poll to say who they
    are: they take the poll's recipient and details, and their writes are planned now.
    Returns the events identified and the ledger rows inserted."""
    latest: dict[str, MailEvent] = {}
    for event in polled:
        if event.person_key and recipient_kind(event.recipient_key) != RecipientKind.unidentified:
            latest[unidentified_recipient(event.person_key)] = event
    if not latest:
        return [], []
    waiting: list[MailEvent] = []
    for part in _chunks(sorted(latest)):
        waiting += session.exec(select(MailEvent).where(
            MailEvent.drop_id == campaign.drop_id,
            col(MailEvent.recipient_key).in_(part))).all()
    identified: list[MailEvent] = []
    for row in waiting:
        who = latest[row.recipient_key]
        fields = {"recipient_key": who.recipient_key, "email": row.email or who.email,
                  "phone": row.phone or who.phone, "first_name": row.first_name or who.first_name,
                  "last_name": row.last_name or who.last_name,
                  "carried_contact_id": row.carried_contact_id or who.carried_contact_id}
        session.execute(update(MailEvent).where(col(MailEvent.key) == row.key).values(**fields))
        identified.append(detached(MailEvent, **{**row.model_dump(), **fields}))
    rows = plan_writes(identified, campaign, run_id)
    planned = set(insert_ignore(session, rows, returning="intent_key"))
    return identified, [r for r in rows if r.intent_key in planned]


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


def recipient_for(session: Session, drop_id: str, person: str | None) -> str | None:
    """The recipient key stored for this person in this campaign (Postalytics' DataId
    first), if the store has seen them and knows who they are."""
    if not person:
        return None
    keys = session.exec(select(MailEvent.recipient_key).where(
        MailEvent.drop_id == drop_id, MailEvent.person_key == person).distinct()).all()
    known = sorted(k for k in keys if recipient_kind(k) != RecipientKind.unidentified)
    return known[0] if known else None


def store_webhook_event(session: Session, event: MailEvent, campaign: CampaignConfig,
                        received_at: datetime) -> WebhookStored:
    """Insert one webhook event if new, with the ledger rows it causes, in the session's
    transaction; a second arrival of a stored event only records when its webhook came."""
    adopted = recipient_for(session, campaign.drop_id, event.person_key)
    waits = False
    recipient = event.recipient_key
    if adopted is not None:
        recipient = adopted
    elif not (event.carried_contact_id or event.email or event.phone):
        assert event.person_key is not None  # normalise refuses a webhook without one
        recipient, waits = unidentified_recipient(event.person_key), True
    event = _with(event, recipient_key=recipient, source=EventSource.webhook,
                  received_at=received_at)
    if not insert_ignore(session, [event]):
        same = (col(MailEvent.match_key) == event.match_key if event.match_key
                else col(MailEvent.key) == event.key)
        session.execute(update(MailEvent).where(same, col(MailEvent.received_at).is_(None))
                        .values(received_at=received_at))
        return WebhookStored(Arrival.duplicate, event.key)
    if waits:
        return WebhookStored(Arrival.awaiting_poll, event.key)
    rows = plan_writes([event], campaign, None)
    planned = insert_ignore(session, rows, returning="intent_key")
    return WebhookStored(Arrival.stored, event.key, len(planned))
