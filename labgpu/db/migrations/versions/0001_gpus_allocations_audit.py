"""GPUs, allocations (one row per GPU held) and the allocation audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gpus",
        sa.Column("uuid", sa.String(96), primary_key=True),
        sa.Column("index", sa.Integer, nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("memory_total", sa.BigInteger, nullable=False),
        sa.Column("healthy", sa.Boolean, nullable=False),
        sa.Column("health_reason", sa.Text, nullable=False),
        sa.Column("mig_enabled", sa.Boolean, nullable=False),
        sa.Column("mig_devices", sa.Text, nullable=False),
        sa.Column("pci_bus_id", sa.String(32), nullable=False),
        sa.Column("numa_node", sa.Integer, nullable=True),
        sa.Column("switch_group", sa.String(64), nullable=False),
        sa.Column("nvlink_peers", sa.Text, nullable=False),
        sa.Column("present", sa.Boolean, nullable=False),
        sa.Column("first_seen", sa.DateTime, nullable=False),
        sa.Column("last_seen", sa.DateTime, nullable=False),
    )
    op.create_table(
        "allocations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("since", sa.DateTime, nullable=False),
        sa.Column("image", sa.Text, nullable=True),
        sa.Column("container_id", sa.String(128), nullable=True),
        sa.UniqueConstraint("user", "server", name="uq_allocations_user_server"),
    )
    op.create_table(
        "allocation_gpus",
        sa.Column("gpu_uuid", sa.String(96), sa.ForeignKey("gpus.uuid"), primary_key=True),
        sa.Column("allocation_id", sa.Integer, sa.ForeignKey("allocations.id", ondelete="CASCADE"), nullable=False),
    )
    op.create_index("ix_allocation_gpus_allocation_id", "allocation_gpus", ["allocation_id"])
    op.create_table(
        "allocation_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("gpu_uuids", sa.Text, nullable=False),
        sa.Column("allocation_id", sa.Integer, nullable=False),
        sa.Column("image", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_allocation_events_at", "allocation_events", ["at"])
    op.create_index("ix_allocation_events_user_server", "allocation_events", ["user", "server"])


def downgrade() -> None:
    op.drop_table("allocation_events")
    op.drop_table("allocation_gpus")
    op.drop_table("allocations")
    op.drop_table("gpus")
