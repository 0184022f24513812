"""Hub events worth counting that no other table records (issue 15, Prometheus metrics): spawns
refused (quota, capacity, queue timeout) and what each reconcile of the ledger with Docker found
(allocations adopted or released, containers stopped, conflicts). Append-only, like the audit.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hub_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_index("ix_hub_events_at", "hub_events", ["at"])


def downgrade() -> None:
    op.drop_index("ix_hub_events_at", table_name="hub_events")
    op.drop_table("hub_events")
