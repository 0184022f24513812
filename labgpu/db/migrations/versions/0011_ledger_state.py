"""The ledger's own counters (ledger_state): ``inventory_version``, bumped by every write to the
gpus table, so a grant reads the GPU inventory only when it changed (issue 21: allocation p99).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "ledger_state",
        sa.Column("key", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(table, [{"key": "inventory_version", "value": 0}])


def downgrade() -> None:
    op.drop_table("ledger_state")
