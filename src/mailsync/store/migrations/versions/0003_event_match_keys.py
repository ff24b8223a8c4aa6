"""one event whichever way it came: match keys, source, webhook arrival

Revision ID: 0003
Revises: 0002

Adds to `mail_events`: `match_key` (unique: hash of drop, code, event time to the second and
person, the same for an event read from the events endpoint and delivered by webhook),
`person_key`, `zip` (stored from now on: the person of a later event is name + zip),
`source` (poll | webhook; every existing row came by poll), `received_at` (when its webhook
arrived) and `poll_key` (unique: the REST key of a webhook event the poll has read since).

Existing rows get their match key where their stored fields allow: a carried contact id, or
an email when the row has no name (with a name, the person is name + zip, and the zip was
not stored before). Two old rows with the same match key (two visits in one second) keep it
on the first only. The key functions are copied here, frozen: this revision must compute
what `sync.normalise` computed when it was written (a test checks they agree).
"""
import hashlib
from datetime import UTC, datetime

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_MATCH_VERSION = "m1"
_BATCH = 1000


def _hash(*parts: object, length: int = 40) -> str:
    joined = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.sha256(joined.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def _person(carried: str | None, has_name: bool, email: str | None) -> str | None:
    if carried:
        return _hash("c", carried.strip())
    if not has_name and email and email.strip():
        return _hash("e", email.strip().casefold())
    return None


def _match(drop_id: str, code: str, event_at: datetime, person: str) -> str:
    at = event_at if event_at.tzinfo else event_at.replace(tzinfo=UTC)
    second = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return _hash(_MATCH_VERSION, drop_id, code, second, person)


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    with op.batch_alter_table("mail_events") as batch:
        batch.add_column(sa.Column("match_key", text(length=64), nullable=True))
        batch.add_column(sa.Column("person_key", text(length=40), nullable=True))
        batch.add_column(sa.Column("zip", text(length=16), nullable=True))
        batch.add_column(sa.Column("source", text(length=8), nullable=False,
                                   server_default="poll"))
        batch.add_column(sa.Column("received_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("poll_key", text(length=80), nullable=True))
    _backfill()
    op.create_index("uq_mail_events_match", "mail_events", ["match_key"], unique=True)
    op.create_index("uq_mail_events_poll_key", "mail_events", ["poll_key"], unique=True)
    op.create_index("ix_mail_events_drop_person", "mail_events", ["drop_id", "person_key"])


def _backfill() -> None:
    conn = op.get_bind()
    events = sa.table("mail_events", sa.column("key", sa.String), sa.column("drop_id", sa.String),
                      sa.column("code", sa.String), sa.column("event_at", sa.DateTime),
                      sa.column("carried_contact_id", sa.String),
                      sa.column("email", sa.String), sa.column("first_name", sa.String),
                      sa.column("last_name", sa.String), sa.column("match_key", sa.String),
                      sa.column("person_key", sa.String))
    candidates = (events.c.carried_contact_id.is_not(None)
                  | (events.c.email.is_not(None) & events.c.first_name.is_(None)
                     & events.c.last_name.is_(None)))
    rows = conn.execute(sa.select(events.c.key, events.c.drop_id, events.c.code,
                                  events.c.event_at, events.c.carried_contact_id,
                                  events.c.email, events.c.first_name, events.c.last_name)
                        .where(candidates).order_by(events.c.key)).all()
    seen: set[str] = set()
    updates: list[dict[str, str]] = []
    for key, drop_id, code, event_at, carried, email, first, last in rows:
        person = _person(carried, bool(first or last), email)
        if person is None or event_at is None:
            continue
        match = _match(drop_id, code, event_at, person)
        if match in seen:
            continue
        seen.add(match)
        updates.append({"k": key, "m": match, "p": person})
    stmt = (events.update().where(events.c.key == sa.bindparam("k"))
            .values(match_key=sa.bindparam("m"), person_key=sa.bindparam("p")))
    for start in range(0, len(updates), _BATCH):
        conn.execute(stmt, updates[start:start + _BATCH])


def downgrade() -> None:
    op.drop_index("ix_mail_events_drop_person", table_name="mail_events")
    op.drop_index("uq_mail_events_poll_key", table_name="mail_events")
    op.drop_index("uq_mail_events_match", table_name="mail_events")
    with op.batch_alter_table("mail_events") as batch:
        for column in ("poll_key", "received_at", "source", "zip", "person_key", "match_key"):
            batch.drop_column(column)
