"""outbox.first_attempt_at: when the first lease that may have called the provider was taken

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

import trialflow.db.tables

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('first_attempt_at', trialflow.db.tables.UTCDateTime(timezone=True), nullable=True))
    # An effect an older trialflow already attempted may have reached its provider at any time since
    # it was written: its next attempt asks the provider back to then.
    op.execute("UPDATE outbox SET first_attempt_at = created_at "
               "WHERE attempts > 0 AND status IN ('pending', 'delivering')")


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('first_attempt_at')
