"""Telemetry: raw per-GPU and per-process samples, minute and hour rollups, the poller's
bookkeeping, and ``gpus.health_override`` (a GPU the poller saw fail is not allocated).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Milliseconds (seconds for buckets) since the epoch: BIGINT on PostgreSQL, whose INTEGER is
# 32-bit; INTEGER on SQLite, 64-bit already and what SQLite ledgers were created with.
EPOCH_INTEGER = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("gpus") as batch:
        batch.add_column(sa.Column("health_override", sa.Text, nullable=True))
    op.create_table(
        "telemetry_gpu",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("uuid", sa.String(96), nullable=False, unique=True),
        sa.Column("gpu_index", sa.Integer, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("memory_total_mib", sa.Integer, nullable=True),
        sa.Column("healthy", sa.Boolean, nullable=False),
        sa.Column("problem", sa.String(512), nullable=True),
        sa.Column("problem_since", sa.Float, nullable=True),
        sa.Column("first_seen", sa.Float, nullable=False),
    )
    op.create_table(
        "telemetry_owner",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("container_id", sa.String(64), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("server", sa.String(255), nullable=False),
        sa.UniqueConstraint("kind", "container_id", "user", "server", name="uq_telemetry_owner"),
    )
    # Samples and rollups are keyed by what they are queried by, without rowids: the database
    # stays small (see docs/telemetry.md for the size per GPU per day).
    op.create_table(
        "telemetry_gpu_sample",
        sa.Column("gpu_id", sa.Integer, primary_key=True),
        sa.Column("ts_ms", EPOCH_INTEGER, primary_key=True),
        sa.Column("dt_ms", sa.Integer, nullable=False),
        sa.Column("util_gpu", sa.Integer, nullable=True),
        sa.Column("util_memory", sa.Integer, nullable=True),
        sa.Column("memory_used_mib", sa.Integer, nullable=True),
        sa.Column("temperature_c", sa.Integer, nullable=True),
        sa.Column("power_dw", sa.Integer, nullable=True),
        sa.Column("throttle_reasons", sa.Integer, nullable=True),
        sa.Column("ecc_uncorrected", sa.Integer, nullable=True),
        sa.Column("healthy", sa.Boolean, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "telemetry_process_sample",
        sa.Column("gpu_id", sa.Integer, primary_key=True),
        sa.Column("ts_ms", EPOCH_INTEGER, primary_key=True),
        sa.Column("pid", sa.Integer, primary_key=True),
        sa.Column("owner_id", sa.Integer, nullable=False),
        sa.Column("dt_ms", sa.Integer, nullable=False),
        sa.Column("memory_used_mib", sa.Integer, nullable=True),
        sa.Column("sm_util", sa.Integer, nullable=True),
        sa.Column("busy_pm", sa.Integer, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "telemetry_gpu_rollup",
        sa.Column("resolution", sa.Integer, primary_key=True),
        sa.Column("gpu_id", sa.Integer, primary_key=True),
        sa.Column("bucket", EPOCH_INTEGER, primary_key=True),
        sa.Column("samples", sa.Integer, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("busy_s", sa.Float, nullable=False),
        sa.Column("util_max", sa.Integer, nullable=False),
        sa.Column("memory_used_max_mib", sa.Integer, nullable=False),
        sa.Column("memory_mib_s", sa.Float, nullable=False),
        sa.Column("temperature_max_c", sa.Integer, nullable=False),
        sa.Column("energy_j", sa.Float, nullable=False),
        sa.Column("unhealthy_s", sa.Float, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "telemetry_owner_rollup",
        sa.Column("resolution", sa.Integer, primary_key=True),
        sa.Column("owner_id", sa.Integer, primary_key=True),
        sa.Column("gpu_id", sa.Integer, primary_key=True),
        sa.Column("bucket", EPOCH_INTEGER, primary_key=True),
        sa.Column("samples", sa.Integer, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("busy_s", sa.Float, nullable=False),
        sa.Column("memory_used_max_mib", sa.Integer, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "telemetry_state",
        sa.Column("key", sa.String(32), primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "telemetry_state",
        "telemetry_owner_rollup",
        "telemetry_gpu_rollup",
        "telemetry_process_sample",
        "telemetry_gpu_sample",
        "telemetry_owner",
        "telemetry_gpu",
    ):
        op.drop_table(table)
    with op.batch_alter_table("gpus") as batch:
        batch.drop_column("health_override")
