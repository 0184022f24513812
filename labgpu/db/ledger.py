"""The ledger: SQLAlchemy models and the only code that reads or writes LabGPU's database.

SQLite in WAL mode; every write is one ``BEGIN IMMEDIATE`` transaction, so allocations from
several processes (hub, CLI, poller) are serialized by SQLite itself and a GPU is never
granted twice. The ledger is the single source of truth for who holds which GPU; each grant
and release is also written to an audit table. Migrations are Alembic's (``labgpu/db/migrations``),
run to ``head`` when a :class:`Ledger` opens the database.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from labgpu.gpus.allocator import (
    Allocation,
    HeldGpu,
    Placement,
    ReconcilePlan,
    UserTotalExceeded,
    choose_gpus,
    grantable,
)
from labgpu.gpus.inventory import Gpu, MigDevice, mig_units
from labgpu.labels import server_label

__all__ = [
    "AuditEvent",
    "Base",
    "GpuHolding",
    "InventorySync",
    "Ledger",
    "LedgerError",
    "ledger_engine",
    "upgrade_to_head",
]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Our own Alembic version table, so the ledger can share a database with JupyterHub's.
VERSION_TABLE = "labgpu_alembic_version"


class LedgerError(RuntimeError):
    """The ledger cannot do what was asked; the message says why and what to do."""


# ============================================================================================
# Shared declarative base and column types (every table of the ledger uses these)
# ============================================================================================


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes (SQLite stores them naive)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the ledger stores aware datetimes only (use datetime.now(timezone.utc))")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    """Declarative base for every ledger table (allocations here; telemetry joins later)."""


# ============================================================================================
# GPU inventory and allocations
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


class AllocatedGpuRow(Base):
    """One GPU of one allocation. The GPU UUID is the primary key: no GPU is ever held twice."""

    __tablename__ = "allocation_gpus"

    gpu_uuid: Mapped[str] = mapped_column(String(96), ForeignKey("gpus.uuid"), primary_key=True)
    allocation_id: Mapped[int] = mapped_column(Integer, ForeignKey("allocations.id", ondelete="CASCADE"), index=True)


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


# (Telemetry tables -- samples, rollups -- go in their own section below this line.)


# ============================================================================================
# Engine: SQLite, WAL, busy timeout, BEGIN IMMEDIATE
# ============================================================================================


def _sqlite_url(url_or_path: str | Path) -> str:
    text = str(url_or_path)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def ledger_engine(url_or_path: str | Path, *, immediate: bool = True, busy_timeout_ms: int = 30_000) -> Engine:
    """An engine for the ledger: WAL, a busy timeout, foreign keys on, and (for writers)
    transactions that start with ``BEGIN IMMEDIATE`` so that read-then-write cannot race."""
    url = make_url(_sqlite_url(url_or_path))
    if url.get_backend_name() != "sqlite":
        return create_engine(url)
    database = url.database or ""
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event decide how transactions start (pysqlite would not).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # In WAL mode NORMAL survives a crash of the hub; only a power cut can lose the last
        # commits, and then the containers are gone too (reconcile on start repairs the rest).
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _alembic_config(connection: Connection | None = None, url: str | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        config.set_main_option("sqlalchemy.url", url)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


_HEAD_CACHE: dict[str, str | None] = {}


def _head_revision() -> str | None:
    if "head" not in _HEAD_CACHE:
        from alembic.script import ScriptDirectory

        _HEAD_CACHE["head"] = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    return _HEAD_CACHE["head"]


def _current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade_to_head(engine: Engine) -> bool:
    """Run Alembic migrations to ``head`` if the database is behind; True if it ran any.

    The check is one query; the upgrade runs inside one ``BEGIN IMMEDIATE`` transaction, so
    processes opening a fresh database at the same time migrate it exactly once.
    """
    head = _head_revision()
    with engine.connect() as conn:
        current = _current_revision(conn)
        conn.rollback()
    if current == head:
        return False
    from alembic import command

    with engine.begin() as conn:
        if _current_revision(conn) == head:  # another process migrated it meanwhile
            return False
        command.upgrade(_alembic_config(conn), "head")
    return True


# ============================================================================================
# Plain results
# ============================================================================================


@dataclass(frozen=True)
class GpuHolding:
    """A GPU and the allocation holding it (None when free)."""

    gpu: Gpu
    present: bool
    allocation: Allocation | None


@dataclass(frozen=True)
class AuditEvent:
    """One row of the allocation audit."""

    id: int
    at: datetime
    action: str
    user: str
    server: str
    gpu_uuids: tuple[str, ...]
    allocation_id: int
    image: str | None
    reason: str


@dataclass(frozen=True)
class InventorySync:
    """What changed when the inventory was written to the ledger, for the hub's log."""

    added: tuple[str, ...] = ()
    gone: tuple[str, ...] = ()  # no longer listed: not allocatable; holders keep them until release
    became_unhealthy: tuple[str, ...] = ()
    recovered: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReconcileResult:
    """What applying a reconcile plan changed (skipped steps had gone stale meanwhile)."""

    released: tuple[Allocation, ...] = ()
    adopted: tuple[Allocation, ...] = ()
    skipped: tuple[str, ...] = ()


# ============================================================================================
# The ledger
# ============================================================================================

_gpus = GpuRow.__table__
_allocations = AllocationRow.__table__
_allocated = AllocatedGpuRow.__table__
_events = AllocationEventRow.__table__


def _gpu_from_row(row: Any) -> Gpu:
    return Gpu(
        uuid=row.uuid,
        index=row.index,
        model=row.model,
        memory_total=row.memory_total,
        healthy=bool(row.healthy) and not row.health_override,
        health_reason=row.health_override or row.health_reason or "",
        mig_enabled=bool(row.mig_enabled),
        mig_devices=tuple(MigDevice(**m) for m in json.loads(row.mig_devices or "[]")),
        pci_bus_id=row.pci_bus_id or "",
        numa_node=row.numa_node,
        switch_group=row.switch_group or "",
        nvlink_peers=frozenset(json.loads(row.nvlink_peers or "[]")),
        mig_parent=row.mig_parent or "",
        mig_index=row.mig_index,
    )


# Statements on the allocation path, built once (building them per call costs more than SQLite).
_SERVER_ALLOCATION = select(_allocations).where(
    _allocations.c.user == bindparam("user"), _allocations.c.server == bindparam("server")
)
_ALLOCATION_GPUS = (
    select(_allocated.c.gpu_uuid)
    .join(_gpus, _gpus.c.uuid == _allocated.c.gpu_uuid)
    .where(_allocated.c.allocation_id == bindparam("allocation_id"))
    .order_by(_gpus.c.index, _gpus.c.mig_index, _gpus.c.uuid)
)
_GPUS_WITH_HOLDERS = (
    select(
        *(column for column in _gpus.c if column.name not in ("first_seen", "last_seen")),
        _allocations.c.user.label("holder"),
        _allocations.c.server.label("holder_server"),
        _allocations.c.since.label("held_since"),
        _allocations.c.id.label("allocation_id"),
    )
    .select_from(
        _gpus.outerjoin(_allocated, _allocated.c.gpu_uuid == _gpus.c.uuid).outerjoin(
            _allocations, _allocations.c.id == _allocated.c.allocation_id
        )
    )
    .order_by(_gpus.c.index, _gpus.c.mig_index, _gpus.c.uuid)
)
_ALL_ALLOCATED_GPUS = (
    select(_allocated.c.allocation_id, _allocated.c.gpu_uuid)
    .join(_gpus, _gpus.c.uuid == _allocated.c.gpu_uuid)
    .order_by(_allocated.c.allocation_id, _gpus.c.index, _gpus.c.mig_index, _gpus.c.uuid)
)
_INSERT_EVENT = insert(_events)
_INSERT_ALLOCATION = insert(_allocations)
_INSERT_ALLOCATED = insert(_allocated)
_DELETE_ALLOCATED = delete(_allocated).where(_allocated.c.allocation_id == bindparam("allocation_id"))
_DELETE_ALLOCATION = delete(_allocations).where(_allocations.c.id == bindparam("allocation_id"))
_GPU_COLUMNS = len(_gpus.c) - 2  # the columns of _GPUS_WITH_HOLDERS before the holder's


class Ledger:
    """Who holds which GPU, in one SQLite file shared by every process of the hub.

    Open it with a path or an SQLAlchemy URL; it migrates the schema to ``head`` on open.
    All methods are safe to call from several threads and processes at once.
    """

    def __init__(self, url_or_path: str | Path, *, clock: Callable[[], datetime] | None = None, migrate: bool = True):
        self.url = _sqlite_url(url_or_path)
        self._write = ledger_engine(self.url, immediate=True)
        self._read = ledger_engine(self.url, immediate=False)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._parsed_gpus: dict[tuple, Gpu] = {}
        if migrate:
            upgrade_to_head(self._write)

    def _gpu(self, row: Any) -> Gpu:
        """A row's GPU, parsed once per distinct row (the allocation path reads every GPU)."""
        key = tuple(row[:_GPU_COLUMNS])  # every GPU column, so a changed row is parsed again
        gpu = self._parsed_gpus.get(key)
        if gpu is None:
            if len(self._parsed_gpus) > 4096:
                self._parsed_gpus.clear()
            gpu = self._parsed_gpus[key] = _gpu_from_row(row)
        return gpu

    def close(self) -> None:
        self._write.dispose()
        self._read.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- inventory -------------------------------------------------------------------------

    def sync_inventory(self, gpus: Sequence[Gpu]) -> InventorySync:
        """Record the inventory's GPUs (by UUID) and their MIG slices; ones it no longer lists
        stop being allocatable (their holders keep them until they release)."""
        now = self._clock()
        gpus = [*gpus, *(unit for gpu in gpus for unit in mig_units(gpu))]
        listed = {g.uuid: g for g in gpus}
        with self._write.begin() as conn:
            known = {r.uuid: r for r in conn.execute(select(_gpus.c.uuid, _gpus.c.healthy, _gpus.c.present))}
            added, gone, sick, recovered = [], [], [], []
            for gpu in gpus:
                values = dict(
                    index=gpu.index,
                    model=gpu.model,
                    memory_total=gpu.memory_total,
                    healthy=gpu.healthy,
                    health_reason=gpu.health_reason,
                    mig_enabled=gpu.mig_enabled,
                    mig_devices=json.dumps([m.__dict__ for m in gpu.mig_devices]),
                    pci_bus_id=gpu.pci_bus_id,
                    numa_node=gpu.numa_node,
                    switch_group=gpu.switch_group,
                    nvlink_peers=json.dumps(sorted(gpu.nvlink_peers)),
                    mig_parent=gpu.mig_parent,
                    mig_index=gpu.mig_index,
                    present=True,
                    last_seen=now,
                )
                previous = known.get(gpu.uuid)
                if previous is None:
                    conn.execute(insert(_gpus).values(uuid=gpu.uuid, first_seen=now, **values))
                    added.append(gpu.uuid)
                    continue
                conn.execute(update(_gpus).where(_gpus.c.uuid == gpu.uuid).values(**values))
                if previous.healthy and not gpu.healthy:
                    sick.append(gpu.uuid)
                elif not previous.healthy and gpu.healthy:
                    recovered.append(gpu.uuid)
            for uuid, previous in known.items():
                if uuid not in listed and previous.present:
                    conn.execute(update(_gpus).where(_gpus.c.uuid == uuid).values(present=False))
                    gone.append(uuid)
        return InventorySync(tuple(added), tuple(gone), tuple(sick), tuple(recovered))

    def set_gpu_health(self, uuid: str, problem: str | None) -> None:
        """Take a GPU (and its MIG slices) out of service because the telemetry poller saw it
        fail (``problem`` says what), or put it back (None). sync_inventory leaves this alone.

        A GPU the ledger has not seen yet gets a placeholder row (not present, so not
        allocatable), so the problem still holds once the hub's inventory lists it.
        """
        now = self._clock()
        with self._write.begin() as conn:
            changed = conn.execute(
                update(_gpus)
                .where((_gpus.c.uuid == uuid) | (_gpus.c.mig_parent == uuid))
                .values(health_override=problem)
            ).rowcount
            if not changed and problem is not None:
                conn.execute(
                    insert(_gpus).values(
                        uuid=uuid,
                        index=-1,
                        model="",
                        memory_total=0,
                        healthy=True,
                        health_reason="",
                        mig_enabled=False,
                        mig_devices="[]",
                        pci_bus_id="",
                        numa_node=None,
                        switch_group="",
                        nvlink_peers="[]",
                        present=False,
                        mig_parent="",
                        mig_index=None,
                        first_seen=now,
                        last_seen=now,
                        health_override=problem,
                    )
                )

    # -- reading -----------------------------------------------------------------------------

    def _allocation(self, conn: Connection, row: Any) -> Allocation:
        uuids = conn.execute(_ALLOCATION_GPUS, {"allocation_id": row.id}).scalars()
        return Allocation(row.user, row.server, tuple(uuids), row.since, row.image)

    def allocation_for(self, user: str, server: str = "") -> Allocation | None:
        """The GPUs this server holds, or None."""
        with self._read.connect() as conn:
            row = conn.execute(_SERVER_ALLOCATION, {"user": user, "server": server}).first()
            return self._allocation(conn, row) if row else None

    def _all_allocations(self, conn: Connection) -> dict[int, Allocation]:
        """Every allocation by id, in two queries (the GPU board reads this often)."""
        gpus_of: dict[int, list[str]] = {}
        for allocation_id, uuid in conn.execute(_ALL_ALLOCATED_GPUS):
            gpus_of.setdefault(allocation_id, []).append(uuid)
        return {
            row.id: Allocation(row.user, row.server, tuple(gpus_of.get(row.id, ())), row.since, row.image)
            for row in conn.execute(select(_allocations).order_by(_allocations.c.since, _allocations.c.id))
        }

    def allocations(self) -> list[Allocation]:
        """Every current allocation, oldest first."""
        with self._read.connect() as conn:
            return list(self._all_allocations(conn).values())

    def holdings(self, *, include_gone: bool = False) -> list[GpuHolding]:
        """Every GPU (in index order) with the allocation holding it, if any."""
        with self._read.connect() as conn:
            allocations = self._all_allocations(conn)
            held_by = dict(conn.execute(select(_allocated.c.gpu_uuid, _allocated.c.allocation_id)).all())
            query = select(_gpus).order_by(_gpus.c.present.desc(), _gpus.c.index, _gpus.c.mig_index, _gpus.c.uuid)
            if not include_gone:
                query = query.where(_gpus.c.present.is_(True))
            return [
                GpuHolding(_gpu_from_row(row), bool(row.present), allocations.get(held_by.get(row.uuid, -1)))
                for row in conn.execute(query).all()
            ]

    def audit(self, *, after_id: int = 0, limit: int | None = None) -> list[AuditEvent]:
        """Audit events after ``after_id``, in the order they were committed."""
        with self._read.connect() as conn:
            query = select(_events).where(_events.c.id > after_id).order_by(_events.c.id)
            if limit:
                query = query.limit(limit)
            return [
                AuditEvent(
                    r.id,
                    r.at,
                    r.action,
                    r.user,
                    r.server,
                    tuple(u for u in r.gpu_uuids.split(",") if u),
                    r.allocation_id,
                    r.image,
                    r.reason,
                )
                for r in conn.execute(query).all()
            ]

    # -- writing -----------------------------------------------------------------------------

    def _audit(
        self,
        conn: Connection,
        action: str,
        allocation_id: int,
        user: str,
        server: str,
        uuids: Sequence[str],
        image: str | None,
        reason: str,
        at: datetime,
    ) -> None:
        conn.execute(
            _INSERT_EVENT,
            {
                "at": at,
                "action": action,
                "user": user,
                "server": server,
                "gpu_uuids": ",".join(uuids),
                "allocation_id": allocation_id,
                "image": image,
                "reason": reason,
            },
        )

    def _delete_allocation(self, conn: Connection, row: Any, reason: str, now: datetime) -> Allocation:
        allocation = self._allocation(conn, row)
        conn.execute(_DELETE_ALLOCATED, {"allocation_id": row.id})
        conn.execute(_DELETE_ALLOCATION, {"allocation_id": row.id})
        self._audit(conn, "release", row.id, row.user, row.server, allocation.gpu_uuids, row.image, reason, now)
        return allocation

    def _insert_allocation(
        self,
        conn: Connection,
        action: str,
        user: str,
        server: str,
        uuids: Sequence[str],
        image: str | None,
        reason: str,
        now: datetime,
        container_id: str | None = None,
    ) -> int:
        allocation_id = conn.execute(
            _INSERT_ALLOCATION,
            {"user": user, "server": server, "since": now, "image": image, "container_id": container_id},
        ).inserted_primary_key[0]
        conn.execute(_INSERT_ALLOCATED, [{"gpu_uuid": u, "allocation_id": allocation_id} for u in uuids])
        self._audit(conn, action, allocation_id, user, server, uuids, image, reason, now)
        return allocation_id

    def allocate(
        self,
        user: str,
        server: str = "",
        n: int = 1,
        *,
        models: Collection[str] | None = None,
        placement: Placement = "pack",
        image: str | None = None,
        exclude: Collection[str] = (),
        user_total: int | None = None,
    ) -> Allocation:
        """Grant N free healthy GPUs to this server in one transaction, or raise NotEnoughGpus.

        Asking again for a server that already holds a matching allocation returns it
        unchanged (a retried spawn); a different request releases the old GPUs first.
        ``user_total`` (the quota's GPUs across all of a user's servers) is checked in the same
        transaction, so two servers of one user starting at once cannot both pass it
        (raises UserTotalExceeded).
        """
        if n < 0:
            raise ValueError(f"a server can ask for 0 or more GPUs (got {n})")
        now = self._clock()
        excluded = set(exclude)
        with self._write.begin() as conn:
            existing = conn.execute(_SERVER_ALLOCATION, {"user": user, "server": server}).first()
            rows = conn.execute(_GPUS_WITH_HOLDERS).all()
            if existing is not None:
                mine = [r for r in rows if r.allocation_id == existing.id]
                if (
                    len(mine) == n
                    and all(
                        self._gpu(r).healthy
                        and r.present
                        and grantable(self._gpu(r), n, models)
                        and r.uuid not in excluded
                        for r in mine
                    )
                    and (image is None or image == existing.image)
                ):
                    return self._allocation(conn, existing)
                self._delete_allocation(conn, existing, "replaced by a new request", now)
                freed = {r.uuid for r in mine}  # released above, in this same transaction
            else:
                freed = set()
            if n == 0:
                return Allocation(user, server, (), now, image)
            free, held = [], []
            total = 0
            # A GPU and its MIG slices exclude each other: held whole, no slice is free; one slice held, not the GPU.
            active = [r for r in rows if r.holder is not None and r.uuid not in freed]
            if user_total is not None:
                elsewhere = sum(1 for r in active if r.holder == user and r.holder_server != server)
                if elsewhere + n > user_total:
                    raise UserTotalExceeded(n, elsewhere, user_total)
            sliced = {r.mig_parent for r in active if r.mig_parent}
            whole = {r.uuid for r in active if not r.mig_parent}
            for r in rows:
                gpu = self._gpu(r)
                if not r.present or r.uuid in excluded or gpu.mig_parent in excluded or not grantable(gpu, n, models):
                    continue
                total += 1
                if r.holder is not None and r.uuid not in freed:
                    held.append(HeldGpu(r.uuid, r.holder, r.holder_server, r.held_since))
                elif r.uuid not in sliced and gpu.mig_parent not in whole:
                    free.append(gpu)
            chosen = choose_gpus(free, n, models=models, placement=placement, held=held, total=total, now=now)
            uuids = tuple(g.uuid for g in chosen)
            try:
                self._insert_allocation(conn, "grant", user, server, uuids, image, f"asked for {n} ({placement})", now)
            except IntegrityError as exc:  # a constraint caught what the lock should have prevented
                raise LedgerError(
                    f"could not record the allocation for {server_label(user, server)}: {exc.orig}"
                ) from None
            return Allocation(user, server, uuids, now, image)

    def release(self, user: str, server: str = "", reason: str = "stopped") -> Allocation | None:
        """Free every GPU this server holds (on stop, failed start, dead container); None if none."""
        now = self._clock()
        with self._write.begin() as conn:
            row = conn.execute(_SERVER_ALLOCATION, {"user": user, "server": server}).first()
            if row is None:
                return None
            return self._delete_allocation(conn, row, reason, now)

    def attach_container(self, user: str, server: str, container_id: str) -> bool:
        """Remember which container runs on this server's GPUs; False if it holds none."""
        with self._write.begin() as conn:
            result = conn.execute(
                update(_allocations)
                .where(_allocations.c.user == user, _allocations.c.server == server)
                .values(container_id=container_id)
            )
            return result.rowcount > 0

    def apply_reconcile(self, plan: ReconcilePlan) -> ReconcileResult:
        """Apply :func:`labgpu.gpus.allocator.reconcile`'s plan in one transaction (releases first).

        A step whose premise changed meanwhile (the allocation is different now, a GPU is
        held or unknown) is skipped and reported, never forced.
        """
        now = self._clock()
        released, adopted, skipped = [], [], []
        with self._write.begin() as conn:
            for step in plan.releases:
                row = conn.execute(
                    select(_allocations).where(_allocations.c.user == step.user, _allocations.c.server == step.server)
                ).first()
                if row is None:
                    continue
                current = self._allocation(conn, row)
                if set(current.gpu_uuids) != set(step.gpu_uuids):
                    skipped.append(f"release of {server_label(step.user, step.server)}: its GPUs changed meanwhile")
                    continue
                released.append(self._delete_allocation(conn, row, step.reason, now))
            for step in plan.adoptions:
                label = server_label(step.user, step.server)
                if conn.execute(
                    select(_allocations.c.id).where(
                        _allocations.c.user == step.user, _allocations.c.server == step.server
                    )
                ).first():
                    skipped.append(f"adoption of {label}: it already holds an allocation")
                    continue
                known = set(conn.execute(select(_gpus.c.uuid).where(_gpus.c.uuid.in_(step.gpu_uuids))).scalars())
                taken = set(
                    conn.execute(
                        select(_allocated.c.gpu_uuid).where(_allocated.c.gpu_uuid.in_(step.gpu_uuids))
                    ).scalars()
                )
                if taken or known != set(step.gpu_uuids):
                    why = (
                        f"held: {', '.join(sorted(taken))}"
                        if taken
                        else f"unknown: {', '.join(sorted(set(step.gpu_uuids) - known))}"
                    )
                    skipped.append(f"adoption of {label}: GPUs {why}")
                    continue
                self._insert_allocation(
                    conn,
                    "adopt",
                    step.user,
                    step.server,
                    step.gpu_uuids,
                    None,
                    step.reason,
                    now,
                    container_id=step.container_id,
                )
                adopted.append(Allocation(step.user, step.server, tuple(step.gpu_uuids), now, None))
        return ReconcileResult(tuple(released), tuple(adopted), tuple(skipped))
