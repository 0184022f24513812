"""Which hub granted each allocation (allocations.hub_id), so that with several hubs on one
ledger (PostgreSQL) a hub's reconcile at start releases only its own servers' GPUs, never those
of another hub's running containers (issue 19).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Allocations made before this revision belong to no recorded hub (""): any hub reconciles them.
    with op.batch_alter_table("allocations") as batch:
        batch.add_column(sa.Column("hub_id", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("allocations") as batch:
        batch.drop_column("hub_id")
