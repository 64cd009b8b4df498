"""The trial instances' API and the cloud team's loop: instances' API answers, admin of record and
confirmed teardown; accounts.auto_add_colleagues; cloud_requests

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import trialflow.db.tables

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        for name in ('api_asked_at', 'api_answered_at', 'admin_seen_at', 'teardown_confirmed_at'):
            batch_op.add_column(sa.Column(name, trialflow.db.tables.UTCDateTime(timezone=True), nullable=True))
    # Terminated before trialflow waited for the cloud team's confirmation: taken as gone, as before.
    op.execute("UPDATE instances SET teardown_confirmed_at = claimed_at WHERE status = 'terminated'")
    op.execute("UPDATE instances SET teardown_confirmed_at = CURRENT_TIMESTAMP "
               "WHERE status = 'terminated' AND teardown_confirmed_at IS NULL")
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('auto_add_colleagues', sa.Boolean(), nullable=False, server_default='1'))
    op.create_table(
        'cloud_requests',
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('trial_id', sa.String(length=32), nullable=True),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('ref', sa.String(length=200), nullable=False),
        sa.Column('detail', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'),
                  nullable=False),
        sa.Column('requested_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column('completed_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column('completed_by', sa.String(length=64), nullable=True),
        sa.Column('chased_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_cloud_requests')),
    )
    with op.batch_alter_table('cloud_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cloud_requests_trial_id'), ['trial_id'], unique=False)
        batch_op.create_index('ix_cloud_requests_open', ['requested_at'], unique=False,
                              postgresql_where=sa.text('completed_at IS NULL'),
                              sqlite_where=sa.text('completed_at IS NULL'))


def downgrade() -> None:
    with op.batch_alter_table('cloud_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_cloud_requests_open', postgresql_where=sa.text('completed_at IS NULL'),
                            sqlite_where=sa.text('completed_at IS NULL'))
        batch_op.drop_index(batch_op.f('ix_cloud_requests_trial_id'))
    op.drop_table('cloud_requests')
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_column('auto_add_colleagues')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        for name in ('teardown_confirmed_at', 'admin_seen_at', 'api_answered_at', 'api_asked_at'):
            batch_op.drop_column(name)
