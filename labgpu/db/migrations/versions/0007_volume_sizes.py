"""The last measured size of each home and group folder volume (volume_sizes), for disk quotas.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "volume_sizes",
        sa.Column("volume", sa.String(255), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("measured_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("volume_sizes")
