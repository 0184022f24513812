"""Which group pays, and stable workspace uids/gids (issue 16).

- ``gpu_queue.group_name``: the group a waiting spawn chose to be charged to (its pool and fair
  share), so a queued request keeps its choice across a hub restart.
- ``allocation_events.group_name``: the group each grant was charged to, so usage reports and
  fair-share usage charge that group (the allocation row itself is deleted at release).
- ``workspace_ids``: the uid of each hub user and the gid of each group with a shared folder,
  handed out once and kept, so files in group folders show who wrote them.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows written before this revision were charged to no recorded group ("").
    with op.batch_alter_table("gpu_queue") as batch:
        batch.add_column(sa.Column("group_name", sa.String(255), nullable=False, server_default=""))
    with op.batch_alter_table("allocation_events") as batch:
        batch.add_column(sa.Column("group_name", sa.String(255), nullable=False, server_default=""))
    op.create_table(
        "workspace_ids",
        sa.Column("kind", sa.String(8), primary_key=True),  # "user" (a uid) or "group" (a gid)
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("assigned_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("kind", "number", name="uq_workspace_ids_kind_number"),
    )


def downgrade() -> None:
    op.drop_table("workspace_ids")
    with op.batch_alter_table("allocation_events") as batch:
        batch.drop_column("group_name")
    with op.batch_alter_table("gpu_queue") as batch:
        batch.drop_column("group_name")
