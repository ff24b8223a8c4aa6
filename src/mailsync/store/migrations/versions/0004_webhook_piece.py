"""the webhook's mail piece on its events

Revision ID: 0004
Revises: 0003

Adds `mail_events.piece_id` (the webhook's `mailId`: one mail piece, so one recipient within
a campaign) and an index on (drop_id, piece_id). A webhook names its recipient only by name
and address; two people of one name in one zip would look alike, so a webhook takes the
recipient of an earlier event of the same piece, never of the same name.
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mail_events") as batch:
        batch.add_column(sa.Column("piece_id", sqlmodel.sql.sqltypes.AutoString(length=64),
                                   nullable=True))
    op.create_index("ix_mail_events_drop_piece", "mail_events", ["drop_id", "piece_id"])


def downgrade() -> None:
    op.drop_index("ix_mail_events_drop_piece", table_name="mail_events")
    with op.batch_alter_table("mail_events") as batch:
        batch.drop_column("piece_id")
