"""The GPU ledger: who holds which GPU. The only code that writes the ``gpus``, ``allocations``,
``allocation_gpus`` and ``allocation_events`` tables (:mod:`labgpu.db.tables`).

Every grant is one transaction that first takes the database's exclusive lock (SQLite's
``BEGIN IMMEDIATE``, a PostgreSQL advisory lock: :mod:`labgpu.db.engine`), so allocations from
several processes (hubs, CLI, poller) are serialized by the database itself and a GPU is never
granted twice. Grants, releases and reconcile steps run the statements of
:mod:`labgpu.db.grant_sql` on the driver's cursor (the hot path); the rest reads through
SQLAlchemy. Every GPU limit is checked inside that transaction, whichever path led there (a
spawn with free GPUs, the queue's dequeue grant): the server's, the user's total across their
servers, and the pool of the group the allocation is charged to (recorded with it, so a pool's
use is counted from the ledger itself). The ledger is the single source of truth for who holds which GPU; each grant
and release is also written to an audit table. Opening a :class:`Ledger` migrates the database
to ``head``; the queue, session and telemetry stores open beside it, on the same file.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, insert, select, true, update
from sqlalchemy.engine import Connection
from sqlalchemy.engine.interfaces import DBAPICursor

from labgpu.db import grant_sql
from labgpu.db.engine import Clock, Store
from labgpu.db.tables import AllocatedGpuRow, AllocationEventRow, AllocationRow, GpuRow
from labgpu.gpus.allocator import (
    Allocation,
    GrantRule,
    GroupPoolFull,
    HeldGpu,
    HeldUnits,
    NotEnoughGpus,
    Placement,
    ServerLimitExceeded,
    UserTotalExceeded,
    choose_gpus,
)
from labgpu.gpus.inventory import Gpu, gpu_from_row, gpu_to_row, mig_units
from labgpu.gpus.reconcile import ReconcilePlan
from labgpu.labels import server_label

__all__ = [
    "AuditEvent",
    "GpuHolding",
    "InventorySync",
    "Ledger",
    "LedgerError",
    "ReconcileResult",
]


class LedgerError(RuntimeError):
    """The ledger cannot do what was asked; the message says why and what to do."""


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
    # What the poller saw wrong (health_override) wins over what the inventory said.
    override = row.health_override
    return gpu_from_row(
        {**row._mapping, "healthy": bool(row.healthy) and not override, "health_reason": override or row.health_reason}
    )


# The statements of the readers (the write path's are grant_sql's), built once.
_SERVER_ALLOCATION = select(_allocations).where(
    _allocations.c.user == bindparam("user"), _allocations.c.server == bindparam("server")
)
_ALLOCATION_GPUS = (
    select(_allocated.c.gpu_uuid)
    .join(_gpus, _gpus.c.uuid == _allocated.c.gpu_uuid)
    .where(_allocated.c.allocation_id == bindparam("allocation_id"))
    .order_by(_gpus.c.index, _gpus.c.mig_index.nulls_first(), _gpus.c.uuid)
)
_ALL_ALLOCATED_GPUS = (
    select(_allocated.c.allocation_id, _allocated.c.gpu_uuid)
    .join(_gpus, _gpus.c.uuid == _allocated.c.gpu_uuid)
    .order_by(_allocated.c.allocation_id, _gpus.c.index, _gpus.c.mig_index.nulls_first(), _gpus.c.uuid)
)
_GPU_COLUMNS = len(grant_sql.GPU_COLUMNS)


class Ledger(Store):
    """Who holds which GPU, in one SQLite file shared by every process of the hub.

    Open it with a path or an SQLAlchemy URL; it migrates the schema to ``head`` on open.
    All methods are safe to call from several threads and processes at once.
    """

    background_checkpoints = True  # the grant path never pays for a WAL checkpoint (WalCheckpointer)

    def __init__(
        self, url_or_path: str | Path, *, clock: Clock | None = None, migrate: bool = True, hub_id: str = ""
    ) -> None:
        super().__init__(url_or_path, clock=clock, migrate=migrate)
        self.hub_id = hub_id  # recorded with every grant: several hubs on one ledger reconcile their own
        self._parsed_gpus: dict[tuple[Any, ...], Gpu] = {}
        self._inventory: tuple[Any, list[tuple[Gpu, bool]]] = (None, [])  # (version, [(GPU, present)])
        self._qualifying: dict[tuple[Any, ...], list[Gpu]] = {}  # (version, rule) -> the GPUs it may get
        self._sql = grant_sql.statements(self.postgresql)
        self._integrity_error: type[Exception] = self.writer.dialect.dbapi.IntegrityError  # type: ignore[union-attr]

    def _inventory_now(self, cursor: DBAPICursor) -> list[tuple[Gpu, bool]]:
        """Every GPU (in index order) and whether the inventory lists it: read again only when
        ``inventory_version`` moved (every write to gpus moves it, in its transaction)."""
        cursor.execute(self._sql["inventory_version"])
        found = cursor.fetchone()
        version = found[0] if found else None
        cached_version, inventory = self._inventory
        if version is None or version != cached_version:
            cursor.execute(self._sql["inventory"])
            inventory = [(self._gpu(row), bool(row[grant_sql.PRESENT])) for row in cursor.fetchall()]
            self._inventory = (version, inventory)
        return inventory

    def _qualifying_gpus(self, rule: GrantRule, version: Any, inventory: list[tuple[Gpu, bool]]) -> list[Gpu]:
        """The inventory's GPUs that would do for this kind of request, in index order; worked out
        once per inventory version and kind of request (most grants ask alike)."""
        models = None if rule.models is None else tuple(rule.models)
        key = (version, rule.gpus == 1, models, frozenset(rule.exclude))
        found = self._qualifying.get(key)
        if found is None or version is None:
            if len(self._qualifying) > 256:
                self._qualifying.clear()
            found = self._qualifying[key] = [gpu for gpu, present in inventory if rule.qualifies(gpu, present)]
        return found

    def _inventory_seen(self, inventory: list[tuple[Gpu, bool]]) -> tuple[Any, list[tuple[Gpu, bool]]]:
        """The version of this inventory list (None unless it is still the cached one)."""
        version, cached = self._inventory
        return (version if cached is inventory else None), inventory

    def _gpu(self, row: tuple[Any, ...]) -> Gpu:
        """An inventory row's GPU, parsed once per distinct row."""
        key = row[:_GPU_COLUMNS]  # every GPU column, so a changed row is parsed again
        gpu = self._parsed_gpus.get(key)
        if gpu is None:
            if len(self._parsed_gpus) > 4096:
                self._parsed_gpus.clear()
            values = dict(zip(grant_sql.GPU_COLUMNS, key, strict=True))
            override = values["health_override"]  # what the poller saw wrong wins
            values.update(
                healthy=bool(values["healthy"]) and not override, health_reason=override or values["health_reason"]
            )
            gpu = self._parsed_gpus[key] = gpu_from_row(values)
        return gpu

    # -- inventory -------------------------------------------------------------------------

    def sync_inventory(self, gpus: Sequence[Gpu]) -> InventorySync:
        """Record the inventory's GPUs (by UUID) and their MIG slices; ones it no longer lists
        stop being allocatable (their holders keep them until they release)."""
        now = self._clock()
        gpus = [*gpus, *(unit for gpu in gpus for unit in mig_units(gpu))]
        listed = {g.uuid: g for g in gpus}
        with self.writer.begin() as conn:
            known = {r.uuid: r for r in conn.execute(select(_gpus.c.uuid, _gpus.c.healthy, _gpus.c.present))}
            added, gone, sick, recovered = [], [], [], []
            for gpu in gpus:
                values = {**gpu_to_row(gpu), "present": True, "last_seen": now}
                previous = known.get(gpu.uuid)
                if previous is None:
                    conn.execute(insert(_gpus).values(first_seen=now, **values))
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
            conn.exec_driver_sql(self._sql["bump_inventory_version"])
        return InventorySync(tuple(added), tuple(gone), tuple(sick), tuple(recovered))

    def set_gpu_health(self, uuid: str, problem: str | None) -> None:
        """Take a GPU (and its MIG slices) out of service because the telemetry poller saw it
        fail (``problem`` says what), or put it back (None). sync_inventory leaves this alone.

        A GPU the ledger has not seen yet gets a placeholder row (not present, so not
        allocatable), so the problem still holds once the hub's inventory lists it.
        """
        now = self._clock()
        with self.writer.begin() as conn:
            changed = conn.execute(
                update(_gpus)
                .where((_gpus.c.uuid == uuid) | (_gpus.c.mig_parent == uuid))
                .values(health_override=problem)
            ).rowcount
            if not changed and problem is not None:
                placeholder = gpu_to_row(Gpu(uuid=uuid, index=-1, model="", memory_total=0))
                conn.execute(
                    insert(_gpus).values(
                        **placeholder, present=False, first_seen=now, last_seen=now, health_override=problem
                    )
                )
            conn.exec_driver_sql(self._sql["bump_inventory_version"])

    # -- reading -----------------------------------------------------------------------------

    def _allocation(self, conn: Connection, row: Any) -> Allocation:
        uuids = conn.execute(_ALLOCATION_GPUS, {"allocation_id": row.id}).scalars()
        return Allocation(row.user, row.server, tuple(uuids), row.since, row.image, row.group_name)

    def allocation_for(self, user: str, server: str = "") -> Allocation | None:
        """The GPUs this server holds, or None."""
        with self.reader.connect() as conn:
            row = conn.execute(_SERVER_ALLOCATION, {"user": user, "server": server}).first()
            return self._allocation(conn, row) if row else None

    def _all_allocations(self, conn: Connection, hub_id: str | None = None) -> dict[int, Allocation]:
        """Every allocation by id, in two queries (the GPU board reads this often); with
        ``hub_id``, only those that hub granted (or whose hub was not recorded)."""
        gpus_of: dict[int, list[str]] = {}
        for allocation_id, uuid in conn.execute(_ALL_ALLOCATED_GPUS):
            gpus_of.setdefault(allocation_id, []).append(uuid)
        return {
            row.id: Allocation(
                row.user, row.server, tuple(gpus_of.get(row.id, ())), row.since, row.image, row.group_name
            )
            for row in conn.execute(
                select(_allocations)
                .where(_allocations.c.hub_id.in_([hub_id, ""]) if hub_id is not None else true())
                .order_by(_allocations.c.since, _allocations.c.id)
            )
        }

    def allocations(self, *, hub_id: str | None = None) -> list[Allocation]:
        """Every current allocation, oldest first; with ``hub_id``, only that hub's (and those
        whose hub was not recorded): what its reconcile may release."""
        with self.reader.connect() as conn:
            return list(self._all_allocations(conn, hub_id).values())

    def holdings(self, *, include_gone: bool = False) -> list[GpuHolding]:
        """Every GPU (in index order) with the allocation holding it, if any."""
        with self.reader.connect() as conn:
            allocations = self._all_allocations(conn)
            held_by = dict(conn.execute(select(_allocated.c.gpu_uuid, _allocated.c.allocation_id)).all())
            query = select(_gpus).order_by(
                _gpus.c.present.desc(), _gpus.c.index, _gpus.c.mig_index.nulls_first(), _gpus.c.uuid
            )
            if not include_gone:
                query = query.where(_gpus.c.present.is_(True))
            return [
                GpuHolding(_gpu_from_row(row), bool(row.present), allocations.get(held_by.get(row.uuid, -1)))
                for row in conn.execute(query).all()
            ]

    def audit(self, *, after_id: int = 0, limit: int | None = None) -> list[AuditEvent]:
        """Audit events after ``after_id``, in the order they were committed."""
        with self.reader.connect() as conn:
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
        cursor: DBAPICursor,
        action: str,
        allocation_id: int,
        user: str,
        server: str,
        uuids: Sequence[str],
        image: str | None,
        reason: str,
        at: datetime,
        group: str,
    ) -> None:
        cursor.execute(
            self._sql["insert_event"],
            (self._time(at), action, user, server, ",".join(uuids), allocation_id, image, reason, group),
        )

    def _time(self, when: datetime) -> Any:
        return grant_sql.db_time(when, self.postgresql)

    def _server_allocation(self, cursor: DBAPICursor, user: str, server: str) -> tuple[Any, ...] | None:
        """This server's allocation row: (id, since, image, group_name), or None."""
        cursor.execute(self._sql["server_allocation"], (user, server))
        row = cursor.fetchone()
        return None if row is None else tuple(row)

    def _delete_allocation(
        self,
        cursor: DBAPICursor,
        row: tuple[Any, ...],
        user: str,
        server: str,
        reason: str,
        now: datetime,
        uuids: Sequence[str] | None = None,
    ) -> Allocation:
        """Delete the allocation ``row`` (a :meth:`_server_allocation`) and audit its release;
        ``uuids``: its GPUs, when the caller has read them already."""
        allocation_id, since, image, group = row
        if uuids is None:
            cursor.execute(self._sql["allocation_gpus"], (allocation_id,))
            uuids = [uuid for (uuid,) in cursor.fetchall()]
        cursor.execute(self._sql["delete_allocated"], (allocation_id,))
        cursor.execute(self._sql["delete_allocation"], (allocation_id,))
        self._audit(cursor, "release", allocation_id, user, server, uuids, image, reason, now, group)
        return Allocation(user, server, tuple(uuids), grant_sql.utc_time(since), image, group)

    def _insert_allocation(
        self,
        cursor: DBAPICursor,
        action: str,
        user: str,
        server: str,
        uuids: Sequence[str],
        image: str | None,
        reason: str,
        now: datetime,
        container_id: str | None = None,
        group: str = "",
    ) -> int:
        cursor.execute(
            self._sql["insert_allocation"], (user, server, self._time(now), image, container_id, group, self.hub_id)
        )
        returned = cursor.fetchone()  # RETURNING id: one row
        allocation_id = int(returned[0]) if returned else 0
        cursor.executemany(self._sql["insert_allocated"], [(uuid, allocation_id) for uuid in uuids])
        self._audit(cursor, action, allocation_id, user, server, uuids, image, reason, now, group)
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
        server_limit: int | None = None,
        user_total: int | None = None,
        group: str | None = None,
        pool: int | None = None,
    ) -> Allocation:
        """Grant N free healthy GPUs to this server in one transaction, or raise NotEnoughGpus.

        Asking again for a server that already holds a matching allocation returns it
        unchanged (a retried spawn); a different request releases the old GPUs first.
        The quota's limits are checked in the same transaction, so servers starting at once
        cannot together pass one: ``server_limit`` (GPUs per server: ServerLimitExceeded),
        ``user_total`` (GPUs across the user's servers: UserTotalExceeded), and ``pool`` (GPUs
        the members of ``group`` may hold together, counted from the allocations charged to
        it: GroupPoolFull, a NotEnoughGpus, so a spawn may wait for it in the queue). The
        allocation is recorded as charged to ``group``.
        """
        if n < 0:
            raise ValueError(f"a server can ask for 0 or more GPUs (got {n})")
        if server_limit is not None and n > server_limit:
            raise ServerLimitExceeded(n, server_limit)
        now = self._clock()
        rule = GrantRule(n, models, frozenset(exclude))
        group = group or ""
        with self.raw_write() as cursor:
            existing = self._server_allocation(cursor, user, server)
            inventory = self._inventory_now(cursor)
            cursor.execute(self._sql["holders"])
            holder_of = {row[0]: row for row in cursor.fetchall()}
            freed: set[str] = set()
            if existing is not None:
                ours = {uuid for uuid, h in holder_of.items() if h[grant_sql.ALLOCATION_ID] == existing[0]}
                mine = [(gpu, present) for gpu, present in inventory if gpu.uuid in ours]
                if (
                    len(mine) == n
                    and all(rule.grantable(gpu, present) for gpu, present in mine)
                    and (image is None or image == existing[2])
                    and group == existing[3]
                ):
                    return Allocation(
                        user, server, tuple(g.uuid for g, _ in mine), grant_sql.utc_time(existing[1]), *existing[2:]
                    )
                freed = {gpu.uuid for gpu, _ in mine}  # released here, in this same transaction
                self._delete_allocation(
                    cursor, existing, user, server, "replaced by a new request", now, [g.uuid for g, _ in mine]
                )
                for uuid in freed:
                    del holder_of[uuid]
            if n == 0:
                return Allocation(user, server, (), now, image, group)
            if user_total is not None:
                elsewhere = sum(
                    1
                    for h in holder_of.values()
                    if h[grant_sql.HOLDER] == user and h[grant_sql.HOLDER_SERVER] != server
                )
                if elsewhere + n > user_total:
                    raise UserTotalExceeded(n, elsewhere, user_total)
            if group and pool is not None:
                members: dict[str, int] = {}
                for h in holder_of.values():
                    if h[grant_sql.HOLDER_GROUP] == group:
                        members[h[grant_sql.HOLDER]] = members.get(h[grant_sql.HOLDER], 0) + 1
                if sum(members.values()) + n > pool:
                    raise GroupPoolFull(n, group, pool, members)
            holds = HeldUnits.of(gpu for gpu, _ in inventory if gpu.uuid in holder_of)
            free, held_rows = [], []
            total = 0
            for gpu in self._qualifying_gpus(rule, *self._inventory_seen(inventory)):
                total += 1
                if gpu.uuid in holder_of:
                    held_rows.append(holder_of[gpu.uuid])
                elif holds.free(gpu):
                    free.append(gpu)
            try:
                chosen = choose_gpus(free, n, models=models, placement=placement, total=total, now=now)
            except NotEnoughGpus:  # again, with who holds the rest (parsed only for the message)
                held = [HeldGpu(h[0], h[1], h[2], grant_sql.utc_time(h[3])) for h in held_rows]
                choose_gpus(free, n, models=models, placement=placement, held=held, total=total, now=now)
                raise
            uuids = tuple(g.uuid for g in chosen)
            try:
                self._insert_allocation(
                    cursor, "grant", user, server, uuids, image, f"asked for {n} ({placement})", now, group=group
                )
            except self._integrity_error as exc:  # a constraint caught what the lock should have prevented
                raise LedgerError(f"could not record the allocation for {server_label(user, server)}: {exc}") from None
            return Allocation(user, server, uuids, now, image, group)

    def release(
        self, user: str, server: str = "", reason: str = "stopped", *, granted_at: datetime | None = None
    ) -> Allocation | None:
        """Free every GPU this server holds (once its container is gone); None if none.

        ``granted_at``: release only the allocation granted then (one whose container could not
        be stopped), never a newer one of the same server.
        """
        now = self._clock()
        with self.raw_write() as cursor:
            row = self._server_allocation(cursor, user, server)
            if row is None or (granted_at is not None and grant_sql.utc_time(row[1]) != granted_at):
                return None
            return self._delete_allocation(cursor, row, user, server, reason, now)

    def attach_container(self, user: str, server: str, container_id: str) -> bool:
        """Remember which container runs on this server's GPUs; False if it holds none."""
        with self.writer.begin() as conn:
            result = conn.execute(
                update(_allocations)
                .where(_allocations.c.user == user, _allocations.c.server == server)
                .values(container_id=container_id)
            )
            return result.rowcount > 0

    def apply_reconcile(self, plan: ReconcilePlan) -> ReconcileResult:
        """Apply :func:`labgpu.gpus.reconcile.reconcile`'s plan in one transaction (releases first).

        A step whose premise changed meanwhile (the allocation is different now, a GPU is
        held or unknown) is skipped and reported, never forced.
        """
        now = self._clock()
        released, adopted, skipped = [], [], []
        with self.raw_write() as cursor:
            for release in plan.releases:
                row = self._server_allocation(cursor, release.user, release.server)
                if row is None:
                    continue
                cursor.execute(self._sql["allocation_gpus"], (row[0],))
                current = [uuid for (uuid,) in cursor.fetchall()]
                if set(current) != set(release.gpu_uuids):
                    skipped.append(
                        f"release of {server_label(release.user, release.server)}: its GPUs changed meanwhile"
                    )
                    continue
                released.append(
                    self._delete_allocation(cursor, row, release.user, release.server, release.reason, now, current)
                )
            for adoption in plan.adoptions:
                label = server_label(adoption.user, adoption.server)
                if self._server_allocation(cursor, adoption.user, adoption.server) is not None:
                    skipped.append(f"adoption of {label}: it already holds an allocation")
                    continue
                wanted = list(adoption.gpu_uuids)
                marks = grant_sql.placeholders(len(wanted), self.postgresql)
                cursor.execute(self._sql["known_gpus"].format(marks), wanted)
                known = {uuid for (uuid,) in cursor.fetchall()}
                cursor.execute(self._sql["held_gpus"].format(marks), wanted)
                taken = {uuid for (uuid,) in cursor.fetchall()}
                if taken or known != set(wanted):
                    why = (
                        f"held: {', '.join(sorted(taken))}"
                        if taken
                        else f"unknown: {', '.join(sorted(set(wanted) - known))}"
                    )
                    skipped.append(f"adoption of {label}: GPUs {why}")
                    continue
                self._insert_allocation(
                    cursor,
                    "adopt",
                    adoption.user,
                    adoption.server,
                    adoption.gpu_uuids,
                    None,
                    adoption.reason,
                    now,
                    container_id=adoption.container_id,
                )
                adopted.append(Allocation(adoption.user, adoption.server, tuple(adoption.gpu_uuids), now, None))
        return ReconcileResult(tuple(released), tuple(adopted), tuple(skipped))
