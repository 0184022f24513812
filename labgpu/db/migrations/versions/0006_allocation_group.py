"""The group each allocation is charged to (allocations.group_name), so that a group's GPU pool
is counted from the ledger itself inside the allocation transaction.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Allocations made before this revision are charged to no group ("").
    with op.batch_alter_table("allocations") as batch:
        batch.add_column(sa.Column("group_name", sa.String(255), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("allocations") as batch:
        batch.drop_column("group_name")
