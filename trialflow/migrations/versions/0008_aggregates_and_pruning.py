"""Aggregates kept as the data changes (trial_facts, trial_counts, delivery_stats), the keys of
pruned effects (pruned_keys), the outbox indexes /metrics and pruning read, and the trials indexes
`/trial mine` reads; the aggregates are backfilled from the rows already stored.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

import trialflow.db.tables

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

UTC = trialflow.db.tables.UTCDateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'trial_facts',
        sa.Column('trial_id', sa.String(length=32), nullable=False),
        sa.Column('created_at', UTC, nullable=False),
        sa.Column('week', sa.String(length=8), nullable=False),
        sa.Column('case', sa.String(length=32), nullable=True),
        sa.Column('source', sa.String(length=100), nullable=True),
        sa.Column('ae', sa.String(length=254), nullable=True),
        sa.Column('ce', sa.String(length=254), nullable=True),
        sa.Column('reason', sa.String(length=200), nullable=True),
        sa.Column('state', sa.String(length=32), nullable=False),
        sa.Column('pql_grade', sa.String(length=1), nullable=True),
        sa.Column('started', sa.Boolean(), nullable=False),
        sa.Column('signup_to_start', sa.Float(), nullable=True),
        sa.Column('triage_to_qualified', sa.Float(), nullable=True),
        sa.Column('requested_to_ready', sa.Float(), nullable=True),
        sa.Column('ready_to_handed_off', sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint('trial_id', name=op.f('pk_trial_facts')),
    )
    with op.batch_alter_table('trial_facts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trial_facts_created_at'), ['created_at'], unique=False)
    op.create_table(
        'trial_counts',
        sa.Column('id', ID, autoincrement=True, nullable=False),
        sa.Column('state', sa.String(length=32), nullable=False),
        sa.Column('pql_grade', sa.String(length=1), nullable=True),
        sa.Column('n', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_trial_counts')),
    )
    op.create_table(
        'delivery_stats',
        sa.Column('id', ID, autoincrement=True, nullable=False),
        sa.Column('kind', sa.String(length=48), nullable=False),
        sa.Column('bucket', sa.Integer(), nullable=False),
        sa.Column('n', sa.BigInteger(), nullable=False),
        sa.Column('seconds', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_stats')),
    )
    op.create_table(
        'pruned_keys',
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('delivered_at', UTC, nullable=False),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_pruned_keys')),
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_open', ['id'], unique=False,
                              postgresql_where=sa.text("status != 'delivered'"),
                              sqlite_where=sa.text("status != 'delivered'"))
        batch_op.create_index('ix_outbox_delivered_at', ['delivered_at'], unique=False,
                              postgresql_where=sa.text("status = 'delivered'"),
                              sqlite_where=sa.text("status = 'delivered'"))
    with op.batch_alter_table('trials', schema=None) as batch_op:
        for column in ('sdr', 'ae', 'ce'):
            batch_op.create_index(f'ix_trials_{column}_state', [column, 'state'], unique=False)
    from trialflow.services import aggregates  # the backfill: the same recount the tests compare with
    session = Session(bind=op.get_bind())
    aggregates.recount(session, deliveries=True)
    session.flush()


def downgrade() -> None:
    with op.batch_alter_table('trials', schema=None) as batch_op:
        for column in ('ce', 'ae', 'sdr'):
            batch_op.drop_index(f'ix_trials_{column}_state')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_delivered_at', postgresql_where=sa.text("status = 'delivered'"),
                            sqlite_where=sa.text("status = 'delivered'"))
        batch_op.drop_index('ix_outbox_open', postgresql_where=sa.text("status != 'delivered'"),
                            sqlite_where=sa.text("status != 'delivered'"))
    op.drop_table('pruned_keys')
    op.drop_table('delivery_stats')
    op.drop_table('trial_counts')
    with op.batch_alter_table('trial_facts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trial_facts_created_at'))
    op.drop_table('trial_facts')
