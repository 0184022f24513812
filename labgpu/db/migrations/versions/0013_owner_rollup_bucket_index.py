"""An index on the owner rollups by time, covering the busy-hours read: (resolution, bucket,
owner_id, busy_s). The pages' busy hours read a period's hours and its end minutes for every
owner, a time range that the primary key (resolution, owner_id, gpu_id, bucket) answers only as
one seek per (owner, GPU) pair (~32,000 with 500 users on 64 GPUs) or a read of each owner's
every row; by bucket it is one range read of the index alone (issue 14).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_telemetry_owner_rollup_bucket", "telemetry_owner_rollup", ["resolution", "bucket", "owner_id", "busy_s"]
    )


def downgrade() -> None:
    op.drop_index("ix_telemetry_owner_rollup_bucket", table_name="telemetry_owner_rollup")
