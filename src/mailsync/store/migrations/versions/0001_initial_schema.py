"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-26 23:10:49.935471
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('campaigns',
    sa.Column('drop_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('country', sqlmodel.sql.sqltypes.AutoString(length=2), nullable=False),
    sa.Column('location_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('newest_event_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resume_offset', sa.Integer(), nullable=True),
    sa.Column('last_fetched_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('drop_id')
    )
    op.create_table('contact_links',
    sa.Column('location_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('recipient_key', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('contact_id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('matched_by', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('location_id', 'recipient_key')
    )
    op.create_table('location_leases',
    sa.Column('location_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('holder', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('location_id')
    )
    op.create_table('mail_events',
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('drop_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('recipient_key', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('code', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('event_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expected_delivery', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('url', sa.Text(), nullable=True),
    sa.Column('first_name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('last_name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('email', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
    sa.Column('phone', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('carried_contact_id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('fetched_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('run_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('mail_events', schema=None) as batch_op:
        batch_op.create_index('ix_mail_events_drop_at', ['drop_id', 'event_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_mail_events_recipient_key'), ['recipient_key'], unique=False)

    op.create_table('oauth_tokens',
    sa.Column('location_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('refresh_token_enc', sa.Text(), nullable=False),
    sa.Column('access_token_enc', sa.Text(), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('location_id')
    )
    op.create_table('quarantined_events',
    sa.Column('fingerprint', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('drop_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('run_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.PrimaryKeyConstraint('fingerprint')
    )
    with op.batch_alter_table('quarantined_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_quarantined_events_drop_id'), ['drop_id'], unique=False)

    op.create_table('sync_runs',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('dry_run', sa.Boolean(), nullable=False),
    sa.Column('counts', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('write_ledger',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('intent_key', sqlmodel.sql.sqltypes.AutoString(length=400), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('location_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('drop_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('recipient_key', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('event_key', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True),
    sa.Column('code', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('contact_id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('tag', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('body', sa.Text(), nullable=True),
    sa.Column('marker', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_http_status', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('remote_id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('first_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('run_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('intent_key', name='uq_write_ledger_intent')
    )
    with op.batch_alter_table('write_ledger', schema=None) as batch_op:
        batch_op.create_index('ix_write_ledger_drop_status', ['drop_id', 'status'], unique=False)
        batch_op.create_index('ix_write_ledger_location_status', ['location_id', 'status'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('write_ledger', schema=None) as batch_op:
        batch_op.drop_index('ix_write_ledger_location_status')
        batch_op.drop_index('ix_write_ledger_drop_status')

    op.drop_table('write_ledger')
    op.drop_table('sync_runs')
    with op.batch_alter_table('quarantined_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_quarantined_events_drop_id'))

    op.drop_table('quarantined_events')
    op.drop_table('oauth_tokens')
    with op.batch_alter_table('mail_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mail_events_recipient_key'))
        batch_op.drop_index('ix_mail_events_drop_at')

    op.drop_table('mail_events')
    op.drop_table('location_leases')
    op.drop_table('contact_links')
    op.drop_table('campaigns')

