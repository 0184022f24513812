"""The GPU queue (spawns waiting for GPUs) and reclaim notices (warnings and reclamations).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gpu_queue",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("gpus", sa.Integer, nullable=False),
        sa.Column("groups", sa.Text, nullable=False),
        sa.Column("models", sa.Text, nullable=True),
        sa.Column("placement", sa.String(16), nullable=False),
        sa.Column("image", sa.Text, nullable=True),
        sa.Column("exclude", sa.Text, nullable=False),
        sa.Column("max_runtime", sa.Float, nullable=True),
        sa.Column("submitted_at", sa.DateTime, nullable=False),
        sa.Column("heartbeat_at", sa.DateTime, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ended_at", sa.DateTime, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("gpu_uuids", sa.Text, nullable=False),
    )
    op.create_index("ix_gpu_queue_status", "gpu_queue", ["status"])
    op.create_index("ix_gpu_queue_user_server", "gpu_queue", ["user", "server"])
    op.create_table(
        "reclaim_notices",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("allocation_since", sa.DateTime, nullable=False),
        sa.Column("gpus", sa.Integer, nullable=False),
        sa.Column("last_busy_at", sa.DateTime, nullable=True),
        sa.Column("warned_at", sa.DateTime, nullable=True),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("reclaim_at", sa.DateTime, nullable=True),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("reclaimed_at", sa.DateTime, nullable=True),
        sa.Column("idle_for", sa.Float, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.UniqueConstraint("user", "server", "allocation_since", name="uq_reclaim_notices_allocation"),
    )
    op.create_index("ix_reclaim_notices_user", "reclaim_notices", ["user"])


def downgrade() -> None:
    op.drop_table("reclaim_notices")
    op.drop_index("ix_gpu_queue_user_server", "gpu_queue")
    op.drop_index("ix_gpu_queue_status", "gpu_queue")
    op.drop_table("gpu_queue")
