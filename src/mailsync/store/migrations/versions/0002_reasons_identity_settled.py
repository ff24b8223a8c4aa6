"""typed reasons, the store's identity, contacts settled

Revision ID: 0002
Revises: 0001

Adds `reason_code` to the ledger and the quarantine (existing rows are classified from the
text they carry, once, here), `store_meta` with the store's id, `settled_contacts`,
filled with every contact this store has already written a note to, and `gone_contacts`.
"""
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Old reason text → code, first match wins (the text the code before 0002 wrote).
_LEDGER_PATTERNS = [
    ("no HighLevel contact%", None, "no_contact"),
    ("contact lookup refused%", None, "lookup_refused"),
    ("creating the contact was refused%", None, "create_refused"),
    ("contact lookup%", None, "lookup_unanswered"),
    ("creating the contact%", None, "lookup_unanswered"),
    ("the event behind this write%", None, "event_gone"),
    ("daily quota%", None, "daily_quota"),
    ("drift:%", None, "drift"),
    ("token refused%", None, "token_refused"),
    ("HighLevel answered but the tag%", None, "tag_missing"),
    ("sent, no answer yet%", None, "sending"),
]


def upgrade() -> None:
    with op.batch_alter_table("write_ledger") as batch:
        batch.add_column(sa.Column(
            "reason_code", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
    with op.batch_alter_table("quarantined_events") as batch:
        batch.add_column(sa.Column(
            "reason_code", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False,
            server_default="bad_event"))
    op.create_table(
        "store_meta",
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "settled_contacts",
        sa.Column("location_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("contact_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("location_id", "contact_id"),
    )
    op.create_table(
        "gone_contacts",
        sa.Column("location_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("contact_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("gone_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("location_id", "contact_id"),
    )
    _backfill()


def _backfill() -> None:
    conn = op.get_bind()
    ledger = sa.table("write_ledger", sa.column("reason", sa.Text),
                      sa.column("reason_code", sa.String), sa.column("status", sa.String),
                      sa.column("last_http_status", sa.Integer), sa.column("kind", sa.String),
                      sa.column("location_id", sa.String), sa.column("contact_id", sa.String))
    for pattern, _, code in _LEDGER_PATTERNS:
        conn.execute(ledger.update().where(ledger.c.reason_code.is_(None),
                                           ledger.c.reason.like(pattern))
                     .values(reason_code=code))
    rest = ledger.update().where(ledger.c.reason_code.is_(None), ledger.c.status != "done")
    conn.execute(rest.where(ledger.c.last_http_status.in_([401, 403]))
                 .values(reason_code="token_refused"))
    conn.execute(rest.where(ledger.c.last_http_status == 404).values(reason_code="contact_gone"))
    conn.execute(rest.where(ledger.c.status == "rejected").values(reason_code="refused"))
    conn.execute(rest.where(ledger.c.status == "failed").values(reason_code="unanswered"))
    conn.execute(rest.where(ledger.c.status == "unknown")
                 .values(reason_code="sent_unanswered"))
    quarantine = sa.table("quarantined_events", sa.column("reason", sa.Text),
                          sa.column("reason_code", sa.String))
    conn.execute(quarantine.update().where(quarantine.c.reason.like("unknown event label%"))
                 .values(reason_code="unknown_code"))
    meta = sa.table("store_meta", sa.column("key", sa.String), sa.column("value", sa.Text))
    now = datetime.now(UTC)
    conn.execute(meta.insert().values([
        {"key": "store_id", "value": uuid.uuid4().hex},
        {"key": "created_at", "value": now.isoformat()},
    ]))
    settled = sa.table("settled_contacts", sa.column("location_id", sa.String),
                       sa.column("contact_id", sa.String), sa.column("settled_at", sa.DateTime))
    written = sa.select(ledger.c.location_id, ledger.c.contact_id,
                        sa.literal(now, sa.DateTime(timezone=True))).where(
        ledger.c.kind == "note", ledger.c.status == "done",
        ledger.c.contact_id.is_not(None)).distinct()
    conn.execute(settled.insert().from_select(["location_id", "contact_id", "settled_at"],
                                              written))


def downgrade() -> None:
    op.drop_table("gone_contacts")
    op.drop_table("settled_contacts")
    op.drop_table("store_meta")
    with op.batch_alter_table("quarantined_events") as batch:
        batch.drop_column("reason_code")
    with op.batch_alter_table("write_ledger") as batch:
        batch.drop_column("reason_code")
