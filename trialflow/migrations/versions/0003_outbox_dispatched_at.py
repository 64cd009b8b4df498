"""outbox.dispatched_at: when the Celery relay last sent a task for the effect

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

import trialflow.db.tables

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dispatched_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('dispatched_at')
