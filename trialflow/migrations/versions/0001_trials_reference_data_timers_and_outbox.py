"""trials, reference data, timers and outbox

Revision ID: 0001
Revises:
Create Date: 2026-11-22 15:53:48.838872
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import trialflow.db.tables

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('accounts',
    sa.Column('domain', sa.String(length=253), nullable=False),
    sa.Column('account_name', sa.String(length=200), nullable=False),
    sa.Column('prequalified', sa.Boolean(), nullable=False),
    sa.Column('named_account', sa.Boolean(), nullable=False),
    sa.Column('named_sdr', sa.String(length=254), nullable=True),
    sa.Column('owner_ae', sa.String(length=254), nullable=True),
    sa.Column('owner_ce', sa.String(length=254), nullable=True),
    sa.PrimaryKeyConstraint('domain', name=op.f('pk_accounts'))
    )
    op.create_table('domain_claims',
    sa.Column('domain', sa.String(length=253), nullable=False),
    sa.Column('instance_host', sa.String(length=253), nullable=True),
    sa.Column('trial_id', sa.String(length=32), nullable=True),
    sa.Column('claimed_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('domain', name=op.f('pk_domain_claims'))
    )
    op.create_table('failed_signups',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('received_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_failed_signups'))
    )
    op.create_table('instances',
    sa.Column('host', sa.String(length=253), nullable=False),
    sa.Column('admin_email', sa.String(length=254), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('trial_id', sa.String(length=32), nullable=True),
    sa.Column('claimed_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('host', name=op.f('pk_instances'))
    )
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instances_status'), ['status'], unique=False)

    op.create_table('kv',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_kv'))
    )
    op.create_table('locks',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_locks'))
    )
    op.create_table('outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('trial_id', sa.String(length=32), nullable=True),
    sa.Column('kind', sa.String(length=48), nullable=False),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('result', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('created_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox')),
    sa.UniqueConstraint('key', name=op.f('uq_outbox_key'))
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_pending', ['next_attempt_at'], unique=False, postgresql_where=sa.text("status = 'pending'"), sqlite_where=sa.text("status = 'pending'"))
        batch_op.create_index(batch_op.f('ix_outbox_trial_id'), ['trial_id'], unique=False)

    op.create_table('round_robin',
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('position', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('role', name=op.f('pk_round_robin'))
    )
    op.create_table('staff',
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('slack_user_id', sa.String(length=32), nullable=True),
    sa.Column('github_login', sa.String(length=64), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('email', name=op.f('pk_staff'))
    )
    with op.batch_alter_table('staff', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_staff_github_login'), ['github_login'], unique=False)
        batch_op.create_index(batch_op.f('ix_staff_role'), ['role'], unique=False)
        batch_op.create_index(batch_op.f('ix_staff_slack_user_id'), ['slack_user_id'], unique=False)

    op.create_table('trials',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('domain', sa.String(length=253), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('company', sa.String(length=200), nullable=True),
    sa.Column('source', sa.String(length=100), nullable=True),
    sa.Column('case', sa.String(length=32), nullable=True),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('account_name', sa.String(length=200), nullable=True),
    sa.Column('instance_host', sa.String(length=253), nullable=True),
    sa.Column('sdr', sa.String(length=254), nullable=True),
    sa.Column('ae', sa.String(length=254), nullable=True),
    sa.Column('ce', sa.String(length=254), nullable=True),
    sa.Column('opportunity_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('kept', sa.Boolean(), nullable=False),
    sa.Column('last_activity_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('mql_points', sa.Integer(), nullable=False),
    sa.Column('pql_grade', sa.String(length=1), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trials')),
    sa.UniqueConstraint('email', name=op.f('uq_trials_email'))
    )
    with op.batch_alter_table('trials', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trials_domain'), ['domain'], unique=False)
        batch_op.create_index(batch_op.f('ix_trials_instance_host'), ['instance_host'], unique=False)
        batch_op.create_index(batch_op.f('ix_trials_state'), ['state'], unique=False)

    op.create_table('timers',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('trial_id', sa.String(length=32), nullable=True),
    sa.Column('kind', sa.String(length=48), nullable=False),
    sa.Column('due_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('fired_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['trial_id'], ['trials.id'], name=op.f('fk_timers_trial_id_trials'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_timers')),
    sa.UniqueConstraint('trial_id', 'kind', name='uq_timers_trial_id_kind')
    )
    with op.batch_alter_table('timers', schema=None) as batch_op:
        batch_op.create_index('ix_timers_pending_due', ['due_at'], unique=False, postgresql_where=sa.text('fired_at IS NULL'), sqlite_where=sa.text('fired_at IS NULL'))

    op.create_table('trial_history',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('trial_id', sa.String(length=32), nullable=False),
    sa.Column('from_state', sa.String(length=32), nullable=False),
    sa.Column('to_state', sa.String(length=32), nullable=False),
    sa.Column('trigger', sa.String(length=64), nullable=False),
    sa.Column('actor', sa.String(length=254), nullable=False),
    sa.Column('at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('detail', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.ForeignKeyConstraint(['trial_id'], ['trials.id'], name=op.f('fk_trial_history_trial_id_trials'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trial_history'))
    )
    with op.batch_alter_table('trial_history', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trial_history_trial_id'), ['trial_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('trial_history', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trial_history_trial_id'))

    op.drop_table('trial_history')
    with op.batch_alter_table('timers', schema=None) as batch_op:
        batch_op.drop_index('ix_timers_pending_due', postgresql_where=sa.text('fired_at IS NULL'), sqlite_where=sa.text('fired_at IS NULL'))

    op.drop_table('timers')
    with op.batch_alter_table('trials', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trials_state'))
        batch_op.drop_index(batch_op.f('ix_trials_instance_host'))
        batch_op.drop_index(batch_op.f('ix_trials_domain'))

    op.drop_table('trials')
    with op.batch_alter_table('staff', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_staff_slack_user_id'))
        batch_op.drop_index(batch_op.f('ix_staff_role'))
        batch_op.drop_index(batch_op.f('ix_staff_github_login'))

    op.drop_table('staff')
    op.drop_table('round_robin')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_trial_id'))
        batch_op.drop_index('ix_outbox_pending', postgresql_where=sa.text("status = 'pending'"), sqlite_where=sa.text("status = 'pending'"))

    op.drop_table('outbox')
    op.drop_table('locks')
    op.drop_table('kv')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instances_status'))

    op.drop_table('instances')
    op.drop_table('failed_signups')
    op.drop_table('domain_claims')
    op.drop_table('accounts')
