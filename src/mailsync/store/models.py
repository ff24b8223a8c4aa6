"""SQLModel tables: campaigns, mail events, quarantine, contact links, write ledger, runs, leases.

Every table change needs an Alembic revision in `migrations/versions/`; a test compares the
migrated schema with these models.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import Column, DateTime, Index, Text, UniqueConstraint, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import configure_mappers
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Timezone-aware now in UTC; every stored timestamp is UTC."""
    return datetime.now(UTC)


Row = TypeVar("Row", bound=SQLModel)


def detached(model: type[Row], **fields: Any) -> Row:
    """A row built without the ORM's instrumentation, for rows that are only read and then
    stored by `store.ops.insert_ignore`; a session cannot take it. What `model_construct`
    builds, at a quarter of its cost (2.2 µs, not 8: a sync builds one per event and per
    write planned)."""
    # Reading its attributes goes through the mapper, which must be set up first (a session
    # does that on first use; a pure function like `plan_writes` may run before any). Asked
    # of the mapper first: `configure_mappers` walks every registry, even when done.
    if not model.__mapper__.configured:  # type: ignore[attr-defined]
        configure_mappers()
    defaults, factories = _defaults(model)
    values = {**defaults, **fields}
    for name, factory in factories:
        if name not in fields:
            values[name] = fields[name] = factory()
    # What pydantic's `model_construct` sets, as SQLModel's `__new__` would start it (at a
    # third of the cost of calling that `__new__`).
    row = object.__new__(model)
    object.__setattr__(row, "__dict__", values)
    object.__setattr__(row, "__pydantic_fields_set__", set(fields))
    object.__setattr__(row, "__pydantic_extra__", None)
    object.__setattr__(row, "__pydantic_private__", None)
    return row


_IMMUTABLE = (type(None), str, int, float, bool, StrEnum, tuple, frozenset)


@functools.cache
def _defaults(model: type[SQLModel]) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """A model's plain defaults (shared by every row: so only immutable ones) and its
    default factories."""
    defaults: dict[str, Any] = {}
    factories: list[tuple[str, Any]] = []
    for name, info in model.model_fields.items():
        if info.default_factory is not None:
            factories.append((name, info.default_factory))
        elif not info.is_required():
            if not isinstance(info.default, _IMMUTABLE):
                raise TypeError(f"{model.__name__}.{name}: a mutable default needs a factory")
            defaults[name] = info.default
    return defaults, factories


def _sqlite_text(value: datetime | None) -> str | None:
    """A UTC time as SQLite stores it: the text SQLAlchemy's DATETIME writes ("2026-11-20
    14:03:00.000000"), at a third of the cost of converting and then formatting it (a sync
    binds several times per event)."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        if value.tzinfo is None:
            raise ValueError("naive datetime: store timestamps in UTC")
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both databases (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: store timestamps in UTC")
        return value.astimezone(UTC) if value is not None else None

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """On SQLite, the text SQLAlchemy's DATETIME writes, made in one step."""
        if dialect.name == "sqlite":
            return _sqlite_text
        return super().bind_processor(dialect)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(nullable: bool = True, index: bool = False) -> Column:
    return Column(UTCDateTime(), nullable=nullable, index=index)


class WriteKind(StrEnum):
    tag = "tag"
    untag = "untag"  # a retrigger's removal, so the re-added tag fires workflows again
    note = "note"


class WriteStatus(StrEnum):
    pending = "pending"
    done = "done"
    rejected = "rejected"
    failed = "failed"
    unknown = "unknown"


OPEN_STATUSES = (WriteStatus.pending, WriteStatus.unknown)


class EventSource(StrEnum):
    """How an event first reached the store (`mail_events.source`)."""

    poll = "poll"
    """Read from Postalytics' events endpoint by a scheduled (or manual) sync."""
    webhook = "webhook"
    """Delivered by Postalytics' webhook to `mailsync webhook serve`."""


class Campaign(SQLModel, table=True):
    """A Postalytics drop we sync, with its fetch cursor."""

    __tablename__ = "campaigns"

    drop_id: str = Field(primary_key=True, max_length=64)
    name: str | None = Field(default=None, max_length=255)
    country: str = Field(default="US", max_length=2)
    location_id: str = Field(max_length=64)
    newest_event_at: datetime | None = Field(default=None, sa_column=_ts())
    """The newest event time stored: the incremental cursor (with a lookback before it)."""
    resume_offset: int | None = None
    """Set when a run hit its page cap: how many events from the top it had covered."""
    last_fetched_at: datetime | None = Field(default=None, sa_column=_ts())


_HAS_POLL_KEY = text("poll_key IS NOT NULL")
_HAS_PIECE = text("piece_id IS NOT NULL")


class MailEvent(SQLModel, table=True):
    """One normalised Postalytics event; `key` is deterministic so re-fetches are no-ops."""

    __tablename__ = "mail_events"
    __table_args__ = (
        Index("ix_mail_events_drop_at", "drop_id", "event_at"),
        # Unique indexes, not constraints: SQLite adds them without rebuilding the table, and
        # an INSERT ... ON CONFLICT DO NOTHING skips on them just the same.
        Index("uq_mail_events_match", "match_key", unique=True),
        # Partial: only a webhook's row has a poll key or a piece, and every read by them asks
        # for a value; a polled event is not written to them at all (migration 0006).
        Index("uq_mail_events_poll_key", "poll_key", unique=True,
              sqlite_where=_HAS_POLL_KEY, postgresql_where=_HAS_POLL_KEY),
        Index("ix_mail_events_drop_person", "drop_id", "person_key"),
        Index("ix_mail_events_drop_piece", "drop_id", "piece_id",
              sqlite_where=_HAS_PIECE, postgresql_where=_HAS_PIECE),
    )

    key: str = Field(primary_key=True, max_length=80)
    drop_id: str = Field(max_length=64)
    recipient_key: str = Field(max_length=80, index=True)
    code: str = Field(max_length=32)
    event_at: datetime = Field(sa_column=_ts(nullable=False))
    expected_delivery: str | None = Field(default=None, max_length=32)
    url: str | None = Field(default=None, sa_column=Column(Text))
    first_name: str | None = Field(default=None, max_length=255)
    last_name: str | None = Field(default=None, max_length=255)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=64)
    carried_contact_id: str | None = Field(default=None, max_length=255)
    fetched_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    run_id: str | None = Field(default=None, max_length=64)
    match_key: str | None = Field(default=None, max_length=64)
    """hash(drop, code, event time to the second, person): the same event whichever way it
    came (webhook or events endpoint) has the same one; None when nothing names the person."""
    person_key: str | None = Field(default=None, max_length=40)
    """hash of who the piece went to, as both channels carry it (see sync.normalise)."""
    zip: str | None = Field(default=None, max_length=16)
    source: str = Field(default=EventSource.poll, max_length=8)
    """An `EventSource`: the channel that stored the event first."""
    received_at: datetime | None = Field(default=None, sa_column=_ts())
    """When its webhook first arrived (None: no webhook came, or none yet)."""
    poll_key: str | None = Field(default=None, max_length=80)
    """On a webhook event the poll has read since: the key the events endpoint knows it by
    (`e:<drop>:<EventId>`), so the poll recognises it as stored."""
    piece_id: str | None = Field(default=None, max_length=64)
    """The webhook's `mailId`: the mail piece, so one recipient within a campaign. The
    events endpoint does not send it: a webhook's row, or a polled row a webhook matched,
    has it, and later webhooks of the piece are that recipient's."""


class QuarantinedEvent(SQLModel, table=True):
    """A raw event that could not be normalised, kept with the reason."""

    __tablename__ = "quarantined_events"

    fingerprint: str = Field(primary_key=True, max_length=80)
    drop_id: str = Field(max_length=64, index=True)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    reason: str = Field(sa_column=Column(Text, nullable=False))
    """The details; `reason_code` says which kind of problem it is."""
    reason_code: str = Field(default="bad_event", max_length=32)
    """A `store.reasons.QuarantineReason`."""
    first_seen: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    run_id: str | None = Field(default=None, max_length=64)


class ContactLink(SQLModel, table=True):
    """Recipient → HighLevel contact, and how it was matched; a miss is cached as contact None."""

    __tablename__ = "contact_links"

    location_id: str = Field(primary_key=True, max_length=64)
    recipient_key: str = Field(primary_key=True, max_length=80)
    contact_id: str | None = Field(default=None, max_length=255)
    matched_by: str = Field(max_length=16)  # carried | email | phone | created | none
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class WriteIntent(SQLModel, table=True):
    """The write ledger: one row per intended HighLevel write; its status is the truth."""

    __tablename__ = "write_ledger"
    __table_args__ = (
        UniqueConstraint("intent_key", name="uq_write_ledger_intent"),
        # The only index holding the status, which every stored outcome changes: the apply
        # selects by location and status; by campaign, every status is read (migration 0005).
        Index("ix_write_ledger_location_status", "location_id", "status"),
        Index("ix_write_ledger_drop_id", "drop_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    intent_key: str = Field(max_length=400)
    """Makes a second identical intent impossible: see sync.plan for its forms."""
    kind: str = Field(max_length=8)
    location_id: str = Field(max_length=64)
    drop_id: str = Field(max_length=64)
    recipient_key: str = Field(max_length=80)
    event_key: str | None = Field(default=None, max_length=80)
    code: str = Field(max_length=32)
    contact_id: str | None = Field(default=None, max_length=255)
    tag: str | None = Field(default=None, max_length=255)
    body: str | None = Field(default=None, sa_column=Column(Text))
    marker: str | None = Field(default=None, max_length=64)
    status: str = Field(default=WriteStatus.pending, max_length=16)
    attempts: int = 0
    last_http_status: int | None = None
    reason: str | None = Field(default=None, sa_column=Column(Text))
    """The details (HighLevel's words, who the recipient is); `reason_code` is the kind."""
    reason_code: str | None = Field(default=None, max_length=32)
    """A `store.reasons.Reason`, or None while simply pending or once done."""
    remote_id: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    first_attempt_at: datetime | None = Field(default=None, sa_column=_ts())
    last_attempt_at: datetime | None = Field(default=None, sa_column=_ts())
    run_id: str | None = Field(default=None, max_length=64)


class SyncRun(SQLModel, table=True):
    """One sync, replay or reconcile run, with its counts."""

    __tablename__ = "sync_runs"

    id: str = Field(primary_key=True, max_length=64)
    kind: str = Field(default="sync", max_length=16)
    started_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=_ts())
    status: str = Field(default="running", max_length=16)
    dry_run: bool = False
    counts: str | None = Field(default=None, sa_column=Column(Text))  # JSON


class LocationLease(SQLModel, table=True):
    """Which worker applies a location's writes now; expires unless renewed."""

    __tablename__ = "location_leases"

    location_id: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    expires_at: datetime = Field(sa_column=_ts(nullable=False))
    acquired_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class OAuthTokenRow(SQLModel, table=True):
    """A location's rotated OAuth tokens, encrypted: a refresh token is a secret."""

    __tablename__ = "oauth_tokens"

    location_id: str = Field(primary_key=True, max_length=64)
    refresh_token_enc: str = Field(sa_column=Column(Text, nullable=False))
    access_token_enc: str | None = Field(default=None, sa_column=Column(Text))
    expires_at: datetime | None = Field(default=None, sa_column=_ts())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class StoreMeta(SQLModel, table=True):
    """Facts about the store itself: its identity, created with it, shown by every command."""

    __tablename__ = "store_meta"

    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(sa_column=Column(Text, nullable=False))


class SettledContact(SQLModel, table=True):
    """A contact whose notes this store has read (or written): its own record of the contact.

    A contact without one may hold notes written by another store (a deleted or restored
    store, a second deployment), so its notes are read once, by marker, before any POST.
    """

    __tablename__ = "settled_contacts"

    location_id: str = Field(primary_key=True, max_length=64)
    contact_id: str = Field(primary_key=True, max_length=255)
    settled_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class GoneContact(SQLModel, table=True):
    """A contact id HighLevel said does not exist (deleted or merged): never written to again,
    whether it comes from a cached link, a carried id or a lagging search index."""

    __tablename__ = "gone_contacts"

    location_id: str = Field(primary_key=True, max_length=64)
    contact_id: str = Field(primary_key=True, max_length=255)
    gone_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
