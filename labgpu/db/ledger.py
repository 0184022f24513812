"""The GPU ledger: who holds which GPU. The only code that writes the ``gpus``, ``allocations``,
``allocation_gpus`` and ``allocation_events`` tables (:mod:`labgpu.db.tables`).

Every grant is one ``BEGIN IMMEDIATE`` transaction (:mod:`labgpu.db.engine`), so allocations
from several processes (hub, CLI, poller) are serialized by SQLite itself and a GPU is never
granted twice. Every GPU limit is checked inside that transaction, whichever path led there (a
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

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from labgpu.db.engine import Clock, Store, inserted_id
from labgpu.db.tables import AllocatedGpuRow, AllocationEventRow, AllocationRow, GpuRow
from labgpu.gpus.allocator import (
    Allocation,
    GrantRule,
    GroupPoolFull,
    HeldGpu,
    HeldUnits,
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


# Statements on the allocation path, built once (building them per call costs more than SQLite).
_SERVER_ALLOCATION = select(_allocations).where(
    _allocations.c.user == bindparam("user"), _allocations.c.server == bindparam("server")
)
_ALLOCATION_GPUS = (
    select(_allocated.c.gpu_uuid)
    .join(_gpus, _gpus.c.uuid == _allocated.c.gpu_uuid)
    .where(_allocated.c.allocation_id == bindparam("allocation_id"))
    .order_by(_gpus.c.index, _gpus.c.mig_index.nulls_first(), _gpus.c.uuid)
)
_GPUS_WITH_HOLDERS = (
    select(
        *(column for column in _gpus.c if column.name not in ("first_seen", "last_seen")),
        _allocations.c.user.label("holder"),
        _allocations.c.server.label("holder_server"),
        _allocations.c.since.label("held_since"),
        _allocations.c.id.label("allocation_id"),
        _allocations.c.group_name.label("holder_group"),
    )
    .select_from(
        _gpus.outerjoin(_allocated, _allocated.c.gpu_uuid == _gpus.c.uuid).outerjoin(
            _allocations, _allocations.c.id == _allocated.c.allocation_id
        )
    )
    .order_by(_gpus.c.index, _gpus.c.mig_index.nulls_first(), _gpus.c.uuid)
)
_ALL_ALLOCATED_GPUS = (
    select(_allocated.c.allocation_id, _allocated.c.gpu_uuid)
    .join(_gpus, _gpus.c.uuid == _allocated.c.gpu_uuid)
    .order_by(_allocated.c.allocation_id, _gpus.c.index, _gpus.c.mig_index.nulls_first(), _gpus.c.uuid)
)
_INSERT_EVENT = insert(_events)
_INSERT_ALLOCATION = insert(_allocations)
_INSERT_ALLOCATED = insert(_allocated)
_DELETE_ALLOCATED = delete(_allocated).where(_allocated.c.allocation_id == bindparam("allocation_id"))
_DELETE_ALLOCATION = delete(_allocations).where(_allocations.c.id == bindparam("allocation_id"))
_GPU_COLUMNS = len(_gpus.c) - 2  # the columns of _GPUS_WITH_HOLDERS before the holder's


class Ledger(Store):
    """Who holds which GPU, in one SQLite file shared by every process of the hub.

    Open it with a path or an SQLAlchemy URL; it migrates the schema to ``head`` on open.
    All methods are safe to call from several threads and processes at once.
    """

    def __init__(self, url_or_path: str | Path, *, clock: Clock | None = None, migrate: bool = True) -> None:
        super().__init__(url_or_path, clock=clock, migrate=migrate)
        self._parsed_gpus: dict[tuple[Any, ...], Gpu] = {}

    def _gpu(self, row: Any) -> Gpu:
        """A row's GPU, parsed once per distinct row (the allocation path reads every GPU)."""
        key = tuple(row[:_GPU_COLUMNS])  # every GPU column, so a changed row is parsed again
        gpu = self._parsed_gpus.get(key)
        if gpu is None:
            if len(self._parsed_gpus) > 4096:
                self._parsed_gpus.clear()
            gpu = self._parsed_gpus[key] = _gpu_from_row(row)
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

    # -- reading -----------------------------------------------------------------------------

    def _allocation(self, conn: Connection, row: Any) -> Allocation:
        uuids = conn.execute(_ALLOCATION_GPUS, {"allocation_id": row.id}).scalars()
        return Allocation(row.user, row.server, tuple(uuids), row.since, row.image, row.group_name)

    def allocation_for(self, user: str, server: str = "") -> Allocation | None:
        """The GPUs this server holds, or None."""
        with self.reader.connect() as conn:
            row = conn.execute(_SERVER_ALLOCATION, {"user": user, "server": server}).first()
            return self._allocation(conn, row) if row else None

    def _all_allocations(self, conn: Connection) -> dict[int, Allocation]:
        """Every allocation by id, in two queries (the GPU board reads this often)."""
        gpus_of: dict[int, list[str]] = {}
        for allocation_id, uuid in conn.execute(_ALL_ALLOCATED_GPUS):
            gpus_of.setdefault(allocation_id, []).append(uuid)
        return {
            row.id: Allocation(
                row.user, row.server, tuple(gpus_of.get(row.id, ())), row.since, row.image, row.group_name
            )
            for row in conn.execute(select(_allocations).order_by(_allocations.c.since, _allocations.c.id))
        }

    def allocations(self) -> list[Allocation]:
        """Every current allocation, oldest first."""
        with self.reader.connect() as conn:
            return list(self._all_allocations(conn).values())

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
        conn: Connection,
        action: str,
        allocation_id: int,
        user: str,
        server: str,
        uuids: Sequence[str],
        image: str | None,
        reason: str,
        at: datetime,
        group: str = "",
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
                "group_name": group,
            },
        )

    def _delete_allocation(self, conn: Connection, row: Any, reason: str, now: datetime) -> Allocation:
        allocation = self._allocation(conn, row)
        conn.execute(_DELETE_ALLOCATED, {"allocation_id": row.id})
        conn.execute(_DELETE_ALLOCATION, {"allocation_id": row.id})
        self._audit(
            conn, "release", row.id, row.user, row.server, allocation.gpu_uuids, row.image, reason, now, row.group_name
        )
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
        group: str = "",
    ) -> int:
        allocation_id = inserted_id(
            conn.execute(
                _INSERT_ALLOCATION,
                {
                    "user": user,
                    "server": server,
                    "since": now,
                    "image": image,
                    "container_id": container_id,
                    "group_name": group,
                },
            )
        )
        conn.execute(_INSERT_ALLOCATED, [{"gpu_uuid": u, "allocation_id": allocation_id} for u in uuids])
        self._audit(conn, action, allocation_id, user, server, uuids, image, reason, now, group)
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
        with self.writer.begin() as conn:
            existing = conn.execute(_SERVER_ALLOCATION, {"user": user, "server": server}).first()
            rows = conn.execute(_GPUS_WITH_HOLDERS).all()
            if existing is not None:
                mine = [r for r in rows if r.allocation_id == existing.id]
                if (
                    len(mine) == n
                    and all(rule.grantable(self._gpu(r), r.present) for r in mine)
                    and (image is None or image == existing.image)
                    and group == existing.group_name
                ):
                    return self._allocation(conn, existing)
                self._delete_allocation(conn, existing, "replaced by a new request", now)
                freed = {r.uuid for r in mine}  # released above, in this same transaction
            else:
                freed = set()
            if n == 0:
                return Allocation(user, server, (), now, image, group)
            free, held = [], []
            total = 0
            active = [r for r in rows if r.holder is not None and r.uuid not in freed]
            if user_total is not None:
                elsewhere = sum(1 for r in active if r.holder == user and r.holder_server != server)
                if elsewhere + n > user_total:
                    raise UserTotalExceeded(n, elsewhere, user_total)
            if group and pool is not None:
                members: dict[str, int] = {}
                for r in active:
                    if r.holder_group == group:
                        members[r.holder] = members.get(r.holder, 0) + 1
                if sum(members.values()) + n > pool:
                    raise GroupPoolFull(n, group, pool, members)
            holds = HeldUnits.of(self._gpu(r) for r in active)
            for r in rows:
                gpu = self._gpu(r)
                if not rule.qualifies(gpu, r.present):
                    continue
                total += 1
                if r.holder is not None and r.uuid not in freed:
                    held.append(HeldGpu(r.uuid, r.holder, r.holder_server, r.held_since))
                elif holds.free(gpu):
                    free.append(gpu)
            chosen = choose_gpus(free, n, models=models, placement=placement, held=held, total=total, now=now)
            uuids = tuple(g.uuid for g in chosen)
            try:
                self._insert_allocation(
                    conn, "grant", user, server, uuids, image, f"asked for {n} ({placement})", now, group=group
                )
            except IntegrityError as exc:  # a constraint caught what the lock should have prevented
                raise LedgerError(
                    f"could not record the allocation for {server_label(user, server)}: {exc.orig}"
                ) from None
            return Allocation(user, server, uuids, now, image, group)

    def release(
        self, user: str, server: str = "", reason: str = "stopped", *, granted_at: datetime | None = None
    ) -> Allocation | None:
        """Free every GPU this server holds (once its container is gone); None if none.

        ``granted_at``: release only the allocation granted then (one whose container could not
        be stopped), never a newer one of the same server.
        """
        now = self._clock()
        with self.writer.begin() as conn:
            row = conn.execute(_SERVER_ALLOCATION, {"user": user, "server": server}).first()
            if row is None or (granted_at is not None and row.since != granted_at):
                return None
            return self._delete_allocation(conn, row, reason, now)

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
        with self.writer.begin() as conn:
            for release in plan.releases:
                row = conn.execute(
                    select(_allocations).where(
                        _allocations.c.user == release.user, _allocations.c.server == release.server
                    )
                ).first()
                if row is None:
                    continue
                current = self._allocation(conn, row)
                if set(current.gpu_uuids) != set(release.gpu_uuids):
                    skipped.append(
                        f"release of {server_label(release.user, release.server)}: its GPUs changed meanwhile"
                    )
                    continue
                released.append(self._delete_allocation(conn, row, release.reason, now))
            for adoption in plan.adoptions:
                label = server_label(adoption.user, adoption.server)
                if conn.execute(
                    select(_allocations.c.id).where(
                        _allocations.c.user == adoption.user, _allocations.c.server == adoption.server
                    )
                ).first():
                    skipped.append(f"adoption of {label}: it already holds an allocation")
                    continue
                known = set(conn.execute(select(_gpus.c.uuid).where(_gpus.c.uuid.in_(adoption.gpu_uuids))).scalars())
                taken = set(
                    conn.execute(
                        select(_allocated.c.gpu_uuid).where(_allocated.c.gpu_uuid.in_(adoption.gpu_uuids))
                    ).scalars()
                )
                if taken or known != set(adoption.gpu_uuids):
                    why = (
                        f"held: {', '.join(sorted(taken))}"
                        if taken
                        else f"unknown: {', '.join(sorted(set(adoption.gpu_uuids) - known))}"
                    )
                    skipped.append(f"adoption of {label}: GPUs {why}")
                    continue
                self._insert_allocation(
                    conn,
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
