"""Store one webhook's event: normalise, match with what is stored, plan; one transaction.

Runs in a worker thread of the receiver (the store's calls block). Whatever happens the
answer is typed: stored, a duplicate, waiting for the poll, or quarantined with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import partial

from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailsync.config import CampaignConfig
from mailsync.redact import get_logger
from mailsync.store.models import Campaign, EventSource, MailEvent, QuarantinedEvent
from mailsync.store.ops import insert_ignore, write_isolating
from mailsync.store.reasons import QuarantineReason, describe
from mailsync.sync.match import Arrival, WebhookStored, store_webhook_event
from mailsync.sync.normalise import normalise, quarantined, without_delivery_fields

log = get_logger("mailsync.webhook")


class Outcome(StrEnum):
    """What the receiver answers for one webhook."""

    accepted = "accepted"
    """Committed (new, or already stored): 202."""
    quarantined = "quarantined"
    """Not an event mailsync can store: kept in quarantine with the reason, 400."""


@dataclass(frozen=True)
class Received:
    """The result of storing one webhook."""

    outcome: Outcome
    arrival: Arrival | None = None
    event_key: str | None = None
    planned: int = 0
    reason: str | None = None
    """Why it was quarantined, in words (never the payload)."""


def _campaign_row(campaign: CampaignConfig) -> Campaign:
    return Campaign(drop_id=campaign.drop_id, name=campaign.name, country=campaign.country,
                    location_id=campaign.location)


def _quarantine(session: Session, row: QuarantinedEvent) -> Received:
    insert_ignore(session, [row])
    session.commit()
    reason = describe(QuarantineReason(row.reason_code), row.reason)
    log.info("webhook for campaign %s quarantined: %s", row.drop_id, reason)
    return Received(Outcome.quarantined, reason=reason)


def receive_event(engine: Engine, campaign: CampaignConfig, raw: object,
                  received_at: datetime) -> Received:
    """Store one webhook payload of a campaign and the writes it causes, committed on return.

    A redelivered event (or one the poll stored first) is stored once: the answer is the
    same, and nothing is planned again.
    """
    normalised = normalise(raw, campaign.drop_id, campaign.contact_id_field,
                           source=EventSource.webhook)
    with Session(engine, expire_on_commit=False) as session:
        if normalised.quarantine is not None:
            return _quarantine(session, normalised.quarantine)
        event = normalised.event
        assert event is not None
        # The campaign's row, as the poll would create it (the report names campaigns from it).
        insert_ignore(session, [_campaign_row(campaign)])
        done, refused = write_isolating(session, [event], partial(
            _store, session, campaign=campaign, received_at=received_at))
        if refused:
            (_, error), = refused
            row = quarantined(without_delivery_fields(raw), campaign.drop_id,
                             QuarantineReason.unstorable, error)
            return _quarantine(session, row)
        session.commit()
    stored = done[0]
    return Received(Outcome.accepted, stored.arrival, stored.event_key, stored.planned)


def _store(session: Session, events: list[MailEvent], *, campaign: CampaignConfig,
           received_at: datetime) -> WebhookStored:
    (event,) = events
    return store_webhook_event(session, event, campaign, received_at)
