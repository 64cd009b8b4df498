"""slack and github de-duplication, instance activity, marketing events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 15:55:44.784006
"""
import sqlalchemy as sa
from alembic import op

import trialflow.db.tables

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('github_deliveries',
    sa.Column('delivery_id', sa.String(length=64), nullable=False),
    sa.Column('event', sa.String(length=64), nullable=False),
    sa.Column('received_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('delivery_id', name=op.f('pk_github_deliveries'))
    )
    op.create_table('instance_activity',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('host', sa.String(length=253), nullable=False),
    sa.Column('trial_id', sa.String(length=32), nullable=True),
    sa.Column('at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('active_users', sa.Integer(), nullable=False),
    sa.Column('searches', sa.Integer(), nullable=False),
    sa.Column('code_intel_actions', sa.Integer(), nullable=False),
    sa.Column('repositories', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instance_activity')),
    sa.UniqueConstraint('host', 'at', name='uq_instance_activity_host_at')
    )
    with op.batch_alter_table('instance_activity', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instance_activity_host'), ['host'], unique=False)
        batch_op.create_index(batch_op.f('ix_instance_activity_trial_id'), ['trial_id'], unique=False)

    op.create_table('marketing_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('kind', sa.String(length=48), nullable=False),
    sa.Column('points', sa.Integer(), nullable=False),
    sa.Column('at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('trial_id', sa.String(length=32), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_marketing_events'))
    )
    with op.batch_alter_table('marketing_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_marketing_events_email'), ['email'], unique=False)
        batch_op.create_index(batch_op.f('ix_marketing_events_trial_id'), ['trial_id'], unique=False)

    with op.batch_alter_table('domain_claims', schema=None) as batch_op:
        batch_op.create_index('ix_domain_claims_instance_host', ['instance_host'], unique=False)

    op.create_table('slack_requests',
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('received_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_slack_requests'))
    )


def downgrade() -> None:
    op.drop_table('slack_requests')
    with op.batch_alter_table('domain_claims', schema=None) as batch_op:
        batch_op.drop_index('ix_domain_claims_instance_host')

    with op.batch_alter_table('marketing_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_marketing_events_trial_id'))
        batch_op.drop_index(batch_op.f('ix_marketing_events_email'))

    op.drop_table('marketing_events')
    with op.batch_alter_table('instance_activity', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instance_activity_trial_id'))
        batch_op.drop_index(batch_op.f('ix_instance_activity_host'))

    op.drop_table('instance_activity')
    op.drop_table('github_deliveries')
