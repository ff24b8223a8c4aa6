"""the webhook columns' indexes hold only the rows that have a value

Revision ID: 0006
Revises: 0005

`uq_mail_events_poll_key` (poll_key) and `ix_mail_events_drop_piece` (drop_id, piece_id)
become partial: only a webhook's row has a `poll_key` or a `piece_id`, so every polled event
added a NULL entry to both, a quarter of the indexes an event is written to, for nothing:
every read by them asks for a value (bench/RESULTS.md, section 3). Uniqueness is as before,
as NULLs never collided.
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_HAS_POLL_KEY = sa.text("poll_key IS NOT NULL")
_HAS_PIECE = sa.text("piece_id IS NOT NULL")


def _replace(name: str, columns: list[str], unique: bool, where: sa.TextClause | None) -> None:
    op.drop_index(name, table_name="mail_events")
    op.create_index(name, "mail_events", columns, unique=unique,
                    sqlite_where=where, postgresql_where=where)


def upgrade() -> None:
    _replace("uq_mail_events_poll_key", ["poll_key"], True, _HAS_POLL_KEY)
    _replace("ix_mail_events_drop_piece", ["drop_id", "piece_id"], False, _HAS_PIECE)


def downgrade() -> None:
    _replace("uq_mail_events_poll_key", ["poll_key"], True, None)
    _replace("ix_mail_events_drop_piece", ["drop_id", "piece_id"], False, None)
