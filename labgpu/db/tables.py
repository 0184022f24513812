"""Every table of LabGPU's database, in one module, like JupyterHub's ``orm.py``: one
declarative ``Base`` whose metadata is whole as soon as this module is imported.

Each table has one store that reads and writes it: the GPU ledger (``gpus``, ``allocations``,
``allocation_gpus``, ``allocation_events``: :mod:`labgpu.db.ledger`), the queue and reclaim
notices (:mod:`labgpu.db.queue_store`), sessions (:mod:`labgpu.db.session_store`), the
telemetry tables (:mod:`labgpu.db.telemetry_store`) and volume sizes (:mod:`labgpu.db.disk_store`).
The Alembic migrations in ``labgpu/db/migrations/versions`` create them;
``tests/unit/test_telemetry_ledger.py`` checks that a database migrated to head matches this
metadata, table by table.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Milliseconds and seconds since the epoch: 64-bit on PostgreSQL (its INTEGER is 32-bit), plain
# INTEGER on SQLite (64-bit already; the same DDL as before PostgreSQL, so no SQLite migration).
EpochInteger = BigInteger().with_variant(Integer(), "sqlite")

# ============================================================================================
# The declarative base and its column type
# ============================================================================================


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes (SQLite stores them naive)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the ledger stores aware datetimes only (use datetime.now(timezone.utc))")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    """Declarative base for every table of the database."""

    __table__: ClassVar[Table]  # a Table (SQLAlchemy types it as any FromClause): insert/update/delete take it


# ============================================================================================
# The GPU ledger: inventory, allocations and their audit (migrations 0001, 0002, 0004, 0006)
# ============================================================================================


class GpuRow(Base):
    """A GPU this hub has seen, by UUID; ``present`` is false once the inventory stops listing it."""

    __tablename__ = "gpus"

    uuid: Mapped[str] = mapped_column(String(96), primary_key=True)
    index: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(128))
    memory_total: Mapped[int] = mapped_column(BigInteger)
    healthy: Mapped[bool] = mapped_column(Boolean, default=True)
    health_reason: Mapped[str] = mapped_column(Text, default="")
    mig_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    mig_devices: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of {uuid, index, memory_total, name}
    pci_bus_id: Mapped[str] = mapped_column(String(32), default="")
    numa_node: Mapped[int | None] = mapped_column(Integer, nullable=True)
    switch_group: Mapped[str] = mapped_column(String(64), default="")
    nvlink_peers: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of UUIDs
    present: Mapped[bool] = mapped_column(Boolean, default=True)
    # A MIG slice is a row of its own (its MIG UUID), pointing at its GPU; "" for a whole GPU.
    mig_parent: Mapped[str] = mapped_column(String(96), default="", server_default="")
    mig_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime)
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime)
    # What the telemetry poller saw wrong (an NVML error); NULL when nothing. Kept apart from
    # ``healthy`` so that sync_inventory does not wipe it: only set_gpu_health clears it.
    health_override: Mapped[str | None] = mapped_column(Text, nullable=True)


class AllocationRow(Base):
    """GPUs granted to one server (user + server name); at most one row per server."""

    __tablename__ = "allocations"
    __table_args__ = (UniqueConstraint("user", "server", name="uq_allocations_user_server"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(255))
    server: Mapped[str] = mapped_column(String(255), default="")
    since: Mapped[datetime] = mapped_column(UtcDateTime)
    image: Mapped[str | None] = mapped_column(Text, nullable=True)  # image digest, for reproducibility
    container_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # The group whose pool these GPUs count against ("" = none), as the spawn's limits charged
    # it (migration 0006): a group's pool use is counted from here, inside the grant.
    group_name: Mapped[str] = mapped_column(String(255), default="", server_default="")
    # The hub that granted it (migration 0012; "" = not recorded): with several hubs on one
    # ledger, a hub reconciles only its own allocations.
    hub_id: Mapped[str] = mapped_column(String(64), default="", server_default="")


class AllocatedGpuRow(Base):
    """One GPU of one allocation. The GPU UUID is the primary key: no GPU is ever held twice."""

    __tablename__ = "allocation_gpus"

    gpu_uuid: Mapped[str] = mapped_column(String(96), ForeignKey("gpus.uuid"), primary_key=True)
    allocation_id: Mapped[int] = mapped_column(Integer, ForeignKey("allocations.id", ondelete="CASCADE"), index=True)


class LedgerStateRow(Base):
    """The ledger's counters (migration 0011): ``inventory_version`` goes up with every write to
    ``gpus``, in the same transaction, so a grant re-reads the inventory only when it changed."""

    __tablename__ = "ledger_state"

    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class AllocationEventRow(Base):
    """Audit: every grant, adoption and release, with why; never updated or deleted."""

    __tablename__ = "allocation_events"
    __table_args__ = (Index("ix_allocation_events_user_server", "user", "server"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    action: Mapped[str] = mapped_column(String(16))  # grant | adopt | release
    user: Mapped[str] = mapped_column(String(255))
    server: Mapped[str] = mapped_column(String(255))
    gpu_uuids: Mapped[str] = mapped_column(Text)  # comma-separated
    allocation_id: Mapped[int] = mapped_column(Integer)
    image: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    # The group the grant was charged to (migration 0009), for usage per group.
    group_name: Mapped[str] = mapped_column(String(255), default="", server_default="")


# ============================================================================================
# The GPU queue and reclaim notices (migration 0003)
# ============================================================================================

WAITING, GRANTED, CANCELLED, ABANDONED = "waiting", "granted", "cancelled", "abandoned"  # gpu_queue.status


class QueueEntryRow(Base):
    """A spawn waiting for GPUs: what it asked for and since when; kept after it ends."""

    __tablename__ = "gpu_queue"
    __table_args__ = (
        Index("ix_gpu_queue_status", "status"),
        Index("ix_gpu_queue_user_server", "user", "server"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(255))
    server: Mapped[str] = mapped_column(String(255))
    gpus: Mapped[int] = mapped_column(Integer)
    groups: Mapped[str] = mapped_column(Text, default="[]")  # JSON: the user's hub groups
    models: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list, or NULL = any model
    placement: Mapped[str] = mapped_column(String(16), default="pack")
    image: Mapped[str | None] = mapped_column(Text, nullable=True)
    exclude: Mapped[str] = mapped_column(Text, default="[]")  # JSON: GPU UUIDs never to grant
    max_runtime: Mapped[float | None] = mapped_column(Float, nullable=True)
    submitted_at: Mapped[datetime] = mapped_column(UtcDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime)  # last time a spawn was seen waiting
    status: Mapped[str] = mapped_column(String(16), default=WAITING)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    gpu_uuids: Mapped[str] = mapped_column(Text, default="")  # comma-separated, once granted
    # The group the spawn chose to be charged to (migration 0009; "" = the policy's default).
    group_name: Mapped[str] = mapped_column(String(255), default="", server_default="")


class ReclaimNoticeRow(Base):
    """What the reclaimer knows about one allocation: when its GPUs were last busy, when its
    owner was warned, and whether (and why) it was reclaimed."""

    __tablename__ = "reclaim_notices"
    __table_args__ = (
        UniqueConstraint("user", "server", "allocation_since", name="uq_reclaim_notices_allocation"),
        Index("ix_reclaim_notices_user", "user"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(255))
    server: Mapped[str] = mapped_column(String(255))
    allocation_since: Mapped[datetime] = mapped_column(UtcDateTime)
    gpus: Mapped[int] = mapped_column(Integer)
    last_busy_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    warned_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    reason: Mapped[str] = mapped_column(String(16), default="")  # idle | max_runtime
    reclaim_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    reclaimed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    idle_for: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str] = mapped_column(Text, default="")


# ============================================================================================
# Workspace sessions (migration 0005)
# ============================================================================================


class SessionRow(Base):
    """One run of a workspace container: what it ran on, for reproducing its results."""

    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_user_server", "user", "server"), Index("ix_sessions_started", "started_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(255))
    server: Mapped[str] = mapped_column(String(255))
    container_id: Mapped[str] = mapped_column(String(64))
    image: Mapped[str] = mapped_column(Text)  # the reference the user chose
    image_digest: Mapped[str] = mapped_column(Text)  # repo digest if pulled, else the image id
    driver_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cuda_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    torch_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    gpu_uuids: Mapped[str] = mapped_column(Text, default="")  # comma-separated
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    end_reason: Mapped[str] = mapped_column(Text, default="")


# ============================================================================================
# Telemetry (migration 0004): small rows on purpose, see docs/telemetry.md
# ============================================================================================


class TelemetryGpu(Base):
    """A GPU the poller has seen, by UUID, with its health: the allocator skips unhealthy ones."""

    __tablename__ = "telemetry_gpu"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(96), unique=True)
    gpu_index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128), default="")
    memory_total_mib: Mapped[int | None] = mapped_column(Integer, nullable=True)
    healthy: Mapped[bool] = mapped_column(Boolean, default=True)
    problem: Mapped[str | None] = mapped_column(String(512), nullable=True)
    problem_since: Mapped[float | None] = mapped_column(Float, nullable=True)
    first_seen: Mapped[float] = mapped_column(Float)


class TelemetryOwner(Base):
    """Who a GPU process belonged to: one of our workspaces, another container, or the host."""

    __tablename__ = "telemetry_owner"
    __table_args__ = (UniqueConstraint("kind", "container_id", "user", "server", name="uq_telemetry_owner"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    container_id: Mapped[str] = mapped_column(String(64), default="")
    user: Mapped[str] = mapped_column(String(255), default="")
    server: Mapped[str] = mapped_column(String(255), default="")


class TelemetryGpuSample(Base):
    """One raw per-GPU sample (kept ``Retention.raw_s``). Power is in deciwatts."""

    __tablename__ = "telemetry_gpu_sample"
    __table_args__ = ({"sqlite_with_rowid": False},)
    gpu_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts_ms: Mapped[int] = mapped_column(EpochInteger, primary_key=True)
    dt_ms: Mapped[int] = mapped_column(Integer)
    util_gpu: Mapped[int | None] = mapped_column(Integer, nullable=True)
    util_memory: Mapped[int | None] = mapped_column(Integer, nullable=True)
    memory_used_mib: Mapped[int | None] = mapped_column(Integer, nullable=True)
    temperature_c: Mapped[int | None] = mapped_column(Integer, nullable=True)
    power_dw: Mapped[int | None] = mapped_column(Integer, nullable=True)
    throttle_reasons: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ecc_uncorrected: Mapped[int | None] = mapped_column(Integer, nullable=True)
    healthy: Mapped[bool] = mapped_column(Boolean)


class TelemetryProcessSample(Base):
    """One raw per-process sample; ``busy_pm`` is the owner's share of the GPU in per mille."""

    __tablename__ = "telemetry_process_sample"
    __table_args__ = ({"sqlite_with_rowid": False},)
    gpu_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts_ms: Mapped[int] = mapped_column(EpochInteger, primary_key=True)
    pid: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(Integer)
    dt_ms: Mapped[int] = mapped_column(Integer)
    memory_used_mib: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sm_util: Mapped[int | None] = mapped_column(Integer, nullable=True)
    busy_pm: Mapped[int] = mapped_column(Integer)


class TelemetryGpuRollup(Base):
    """Per-GPU sums over a minute (resolution 60) or an hour (3600)."""

    __tablename__ = "telemetry_gpu_rollup"
    __table_args__ = ({"sqlite_with_rowid": False},)
    resolution: Mapped[int] = mapped_column(Integer, primary_key=True)
    gpu_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[int] = mapped_column(EpochInteger, primary_key=True)
    samples: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    busy_s: Mapped[float] = mapped_column(Float)
    util_max: Mapped[int] = mapped_column(Integer)
    memory_used_max_mib: Mapped[int] = mapped_column(Integer)
    memory_mib_s: Mapped[float] = mapped_column(Float)
    temperature_max_c: Mapped[int] = mapped_column(Integer)
    energy_j: Mapped[float] = mapped_column(Float)
    unhealthy_s: Mapped[float] = mapped_column(Float)


class TelemetryOwnerRollup(Base):
    """Per-owner, per-GPU sums over a minute or an hour: GPU-seconds in use and busy."""

    __tablename__ = "telemetry_owner_rollup"
    # By time, covering the pages' busy-hours read of a period for every owner (migration 0013).
    __table_args__ = (
        Index("ix_telemetry_owner_rollup_bucket", "resolution", "bucket", "owner_id", "busy_s"),
        {"sqlite_with_rowid": False},
    )
    resolution: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gpu_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[int] = mapped_column(EpochInteger, primary_key=True)
    samples: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    busy_s: Mapped[float] = mapped_column(Float)
    memory_used_max_mib: Mapped[int] = mapped_column(Integer)


class TelemetryState(Base):
    """Bookkeeping: how far each resolution is rolled up, and from when each is still kept.
    Keys: rolled_60, rolled_3600 (rolled up until), kept_raw, kept_60, kept_3600 (kept from)."""

    __tablename__ = "telemetry_state"
    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[float] = mapped_column(Float)


# ============================================================================================
# Disk use (migration 0007): the last measured size of each home and group folder volume
# ============================================================================================


class VolumeSizeRow(Base):
    """A hub's volume (a home, a group's shared folder) and its size when last measured, written by
    the disk-usage service (:mod:`labgpu.services.disk_usage`) and read at every spawn."""

    __tablename__ = "volume_sizes"

    volume: Mapped[str] = mapped_column(String(255), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)  # bytes
    measured_at: Mapped[datetime] = mapped_column(UtcDateTime)


# ============================================================================================
# SSH keys (migration 0008): users' public keys for the SSH gateway (labgpu/ssh)
# ============================================================================================


class SshKeyRow(Base):
    """A public key a user registered on the "SSH keys" page; the gateway lets its holder in as
    that user. Read and written only by :mod:`labgpu.db.ssh_key_store`."""

    __tablename__ = "ssh_keys"
    __table_args__ = (
        UniqueConstraint("user", "fingerprint", name="uq_ssh_keys_user_fingerprint"),
        Index("ix_ssh_keys_fingerprint", "fingerprint"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(128))  # SHA256:..., as ssh-keygen -l prints it
    algorithm: Mapped[str] = mapped_column(String(64))  # ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa, ...
    public_key: Mapped[str] = mapped_column(Text)  # "ALGORITHM BASE64" (OpenSSH format, no comment)
    comment: Mapped[str] = mapped_column(Text)
    added_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


# ============================================================================================
# Workspace uids and gids (migration 0009): handed out once per user and group, then kept
# ============================================================================================


class WorkspaceIdRow(Base):
    """The uid a hub user's workspace runs as (kind "user"), or the gid of a group's shared folder
    (kind "group"). Read and written only by :mod:`labgpu.db.workspace_ids`."""

    __tablename__ = "workspace_ids"
    __table_args__ = (UniqueConstraint("kind", "number", name="uq_workspace_ids_kind_number"),)

    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    number: Mapped[int] = mapped_column(Integer)
    assigned_at: Mapped[datetime] = mapped_column(UtcDateTime)


# ============================================================================================
# Hub events (migration 0010): spawn refusals and reconcile findings, counted by the metrics
# ============================================================================================


class HubEventRow(Base):
    """A spawn refusal (kind "refusal", reason = JupyterHub's: quota, capacity, ...) or one finding
    of a reconcile with Docker (kind "reconcile": adopted, released, stopped, conflict, skipped,
    ``count`` of them). Append-only; read and written only by :mod:`labgpu.db.hub_events`."""

    __tablename__ = "hub_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32))
    user: Mapped[str] = mapped_column(String(255))
    server: Mapped[str] = mapped_column(String(255))
    count: Mapped[int] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(Text)
