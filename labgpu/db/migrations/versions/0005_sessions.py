"""Workspace sessions: image reference and digest, driver, CUDA and torch versions, GPUs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("container_id", sa.String(64), nullable=False),
        sa.Column("image", sa.Text, nullable=False),
        sa.Column("image_digest", sa.Text, nullable=False),
        sa.Column("driver_version", sa.String(64), nullable=True),
        sa.Column("cuda_version", sa.String(64), nullable=True),
        sa.Column("torch_version", sa.String(64), nullable=True),
        sa.Column("gpu_uuids", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("ended_at", sa.DateTime, nullable=True),
        sa.Column("end_reason", sa.Text, nullable=False),
    )
    op.create_index("ix_sessions_user_server", "sessions", ["user", "server"])
    op.create_index("ix_sessions_started", "sessions", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_sessions_started", "sessions")
    op.drop_index("ix_sessions_user_server", "sessions")
    op.drop_table("sessions")
