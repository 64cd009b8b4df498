"""github_deliveries.fingerprint: a replayed webhook is recognised by its content

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('github_deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fingerprint', sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_github_deliveries_fingerprint'), ['fingerprint'])


def downgrade() -> None:
    with op.batch_alter_table('github_deliveries', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_github_deliveries_fingerprint'), type_='unique')
        batch_op.drop_column('fingerprint')
