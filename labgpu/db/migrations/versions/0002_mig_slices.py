"""MIG slices as allocatable rows of the gpus table (mig_parent, mig_index).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gpus") as batch:
        batch.add_column(sa.Column("mig_parent", sa.String(96), nullable=False, server_default=""))
        batch.add_column(sa.Column("mig_index", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gpus") as batch:
        batch.drop_column("mig_index")
        batch.drop_column("mig_parent")
