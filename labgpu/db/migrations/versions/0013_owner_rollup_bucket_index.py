"""An index on the owner rollups by (resolution, bucket): the pages' busy hours read the minutes at
a period's two ends for every owner and GPU, a time range that the primary key (resolution,
owner_id, gpu_id, bucket) answers only as one seek per (owner, GPU) pair (~32,000 with 500 users
on 64 GPUs); by bucket it is one range read (issue 14).

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
    op.create_index("ix_telemetry_owner_rollup_bucket", "telemetry_owner_rollup", ["resolution", "bucket"])


def downgrade() -> None:
    op.drop_index("ix_telemetry_owner_rollup_bucket", table_name="telemetry_owner_rollup")
