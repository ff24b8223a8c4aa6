"""the ledger's campaign index without the status

Revision ID: 0005
Revises: 0004

Replaces `ix_write_ledger_drop_status` (drop_id, status) with `ix_write_ledger_drop_id`
(drop_id). Every outcome an apply stores changes a row's status, and each index holding the
status is rewritten with it: with two such indexes, storing an outcome cost a fifth more
(bench/RESULTS.md, section 3). What selects by status also names the location, which
`ix_write_ledger_location_status` serves; what selects by campaign (reports, `settle`)
reads every status of it, which the campaign alone serves.
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_write_ledger_drop_id", "write_ledger", ["drop_id"])
    op.drop_index("ix_write_ledger_drop_status", table_name="write_ledger")


def downgrade() -> None:
    op.create_index("ix_write_ledger_drop_status", "write_ledger", ["drop_id", "status"])
    op.drop_index("ix_write_ledger_drop_id", table_name="write_ledger")
