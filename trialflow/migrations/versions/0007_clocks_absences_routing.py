"""Absences and weighted routing: staff.away_until, backup, weight, max_open_trials; rotation_credits

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('staff', schema=None) as batch_op:
        batch_op.add_column(sa.Column('away_until', sa.Date(), nullable=True))
        batch_op.add_column(sa.Column('backup', sa.String(length=254), nullable=True))
        batch_op.add_column(sa.Column('weight', sa.Float(), nullable=False, server_default='1'))
        batch_op.add_column(sa.Column('max_open_trials', sa.Integer(), nullable=True))
    op.create_table(
        'rotation_credits',
        sa.Column('role', sa.String(length=32), nullable=False),
        sa.Column('email', sa.String(length=254), nullable=False),
        sa.Column('credit', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('role', 'email', name=op.f('pk_rotation_credits')),
    )


def downgrade() -> None:
    op.drop_table('rotation_credits')
    with op.batch_alter_table('staff', schema=None) as batch_op:
        for name in ('max_open_trials', 'weight', 'backup', 'away_until'):
            batch_op.drop_column(name)
