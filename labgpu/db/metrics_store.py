"""What the Prometheus exporter (:mod:`labgpu.metrics`) reads at each scrape, as plain rows,
and nothing else: read-only, and cheap enough to run every 15 s on a busy hub.

The exporter's counters (GPU-hours held and busy, queue waits, grants) grow from what was
recorded since its previous scrape, so every query here that could grow with the database's
age reads only past a watermark the caller passes back in: audit rows after an id, telemetry
samples after a timestamp, queue entries that ended after a time. Only the first scrape of an
exporter reads the whole history (the telemetry's hourly and minute rollups, not its raw
samples). Tables are the ledger's (allocation audit), the queue store's and the telemetry
store's; their own modules stay the only writers.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import and_, bindparam, case, func, or_, select

from labgpu.db.engine import Clock, Store
from labgpu.db.tables import (
    WAITING,
    AllocationEventRow,
    QueueEntryRow,
    ReclaimNoticeRow,
    TelemetryGpu,
    TelemetryGpuSample,
    TelemetryOwner,
    TelemetryOwnerRollup,
    TelemetryProcessSample,
    TelemetryState,
)
from labgpu.gpus.telemetry import HOUR, MINUTE, WORKSPACE

__all__ = ["AuditRow", "GpuTelemetry", "MetricsReader", "QueueRow", "ReclaimCounts", "WaitingEntry"]

_events = AllocationEventRow.__table__
_queue = QueueEntryRow.__table__
_notices = ReclaimNoticeRow.__table__
_gpu = TelemetryGpu.__table__
_gpu_sample = TelemetryGpuSample.__table__
_owner = TelemetryOwner.__table__
_owner_rollup = TelemetryOwnerRollup.__table__
_process_sample = TelemetryProcessSample.__table__
_state = TelemetryState.__table__


@dataclass(frozen=True)
class AuditRow:
    """One grant, adoption or release of the allocation audit, with the group it was charged to."""

    id: int
    at: datetime
    action: str
    user: str
    server: str
    gpus: int
    allocation_id: int
    group: str


@dataclass(frozen=True)
class GpuTelemetry:
    """A GPU's latest sample (None figures: NVML gave none) and its health, as the poller saw it."""

    uuid: str
    index: int
    name: str
    memory_total_mib: int | None
    healthy: bool
    problem: str | None
    ts: float
    utilization_gpu: int | None
    utilization_memory: int | None
    memory_used_mib: int | None
    temperature_c: int | None
    power_w: float | None
    ecc_uncorrected: int | None


@dataclass(frozen=True)
class WaitingEntry:
    user: str
    server: str
    gpus: int
    submitted_at: datetime


@dataclass(frozen=True)
class QueueRow:
    """A queue entry as the exporter counts it: waiting, or how it left the queue and when."""

    id: int
    user: str
    status: str
    submitted_at: datetime
    ended_at: datetime | None


@dataclass(frozen=True)
class ReclaimCounts:
    """Reclaim warnings and reclamations so far, per reason (idle, max_runtime)."""

    warned: dict[str, int]
    reclaimed: dict[str, int]


_GROUP = _events.c.group_name if "group_name" in _events.c else None
_AUDIT_AFTER = (
    select(
        _events.c.id,
        _events.c.at,
        _events.c.action,
        _events.c.user,
        _events.c.server,
        _events.c.gpu_uuids,
        _events.c.allocation_id,
        *([_GROUP] if _GROUP is not None else []),
    )
    .where(_events.c.id > bindparam("after"))
    .order_by(_events.c.id)
)
_SAMPLES_SINCE = select(_gpu_sample).where(
    _gpu_sample.c.gpu_id.in_(bindparam("ids", expanding=True)), _gpu_sample.c.ts_ms >= bindparam("since")
)
_LAST_SAMPLE = (
    select(_gpu_sample.c.ts_ms).where(_gpu_sample.c.gpu_id == bindparam("gpu")).order_by(_gpu_sample.c.ts_ms.desc())
).limit(1)
# One GPU-second per (owner, GPU, tick) however many processes; their busy shares add up to 1.
_PER_TICK = (
    select(
        _process_sample.c.owner_id,
        _process_sample.c.ts_ms,
        func.max(_process_sample.c.dt_ms).label("dt_ms"),
        # at most 1000 per mille; CASE, as SQLite's two-argument min is PostgreSQL's least
        case((func.sum(_process_sample.c.busy_pm) > 1000, 1000), else_=func.sum(_process_sample.c.busy_pm)).label(
            "busy_pm"
        ),
    )
    .where(
        _process_sample.c.gpu_id.in_(bindparam("ids", expanding=True)),
        _process_sample.c.ts_ms > bindparam("after"),
        _process_sample.c.ts_ms <= bindparam("until"),
    )
    .group_by(_process_sample.c.owner_id, _process_sample.c.gpu_id, _process_sample.c.ts_ms)
    .subquery()
)
_RAW_BUSY = select(
    _PER_TICK.c.owner_id, func.sum(_PER_TICK.c.dt_ms * _PER_TICK.c.busy_pm), func.max(_PER_TICK.c.ts_ms)
).group_by(_PER_TICK.c.owner_id)
_ROLLUP_BUSY = (
    select(_owner_rollup.c.owner_id, func.sum(_owner_rollup.c.busy_s))
    .where(
        _owner_rollup.c.resolution == bindparam("resolution"),
        _owner_rollup.c.bucket >= bindparam("start"),
        _owner_rollup.c.bucket < bindparam("end"),
    )
    .group_by(_owner_rollup.c.owner_id)
)


class MetricsReader(Store):
    """Read-only queries on the ledger's database for one exporter (no migration: the hub's)."""

    def __init__(self, url_or_path: str | Path, *, clock: Clock | None = None) -> None:
        super().__init__(url_or_path, clock=clock, migrate=False)
        self._owner_users: dict[int, str] = {}

    # -- the allocation audit ----------------------------------------------------------------

    def audit_after(self, after_id: int) -> list[AuditRow]:
        """Audit rows after ``after_id``, in the order they were committed."""
        with self.reader.connect() as conn:
            rows = conn.execute(_AUDIT_AFTER, {"after": after_id}).all()
        return [
            AuditRow(
                r.id,
                r.at,
                r.action,
                r.user,
                r.server,
                len([u for u in (r.gpu_uuids or "").split(",") if u]),
                r.allocation_id,
                (r.group_name or "") if _GROUP is not None else "",
            )
            for r in rows
        ]

    # -- telemetry: each GPU's latest sample, the poller's last tick ----------------------------

    def latest_samples(self, since: float) -> dict[str, GpuTelemetry]:
        """Each GPU's latest sample at or after ``since`` (epoch seconds), by UUID; a GPU with
        none as recent is left out (its figures would be stale)."""
        with self.reader.connect() as conn:
            gpus = {r.id: r for r in conn.execute(select(_gpu))}
            if not gpus:
                return {}
            latest: dict[int, object] = {}
            for row in conn.execute(_SAMPLES_SINCE, {"ids": list(gpus), "since": int(since * 1000)}):
                kept = latest.get(row.gpu_id)
                if kept is None or row.ts_ms > kept.ts_ms:  # type: ignore[attr-defined]
                    latest[row.gpu_id] = row
        found = {}
        for gpu_id, s in latest.items():
            g = gpus[gpu_id]
            found[g.uuid] = GpuTelemetry(
                g.uuid,
                g.gpu_index,
                g.name or "",
                g.memory_total_mib,
                bool(g.healthy),
                g.problem,
                s.ts_ms / 1000,  # type: ignore[attr-defined]
                s.util_gpu,  # type: ignore[attr-defined]
                s.util_memory,  # type: ignore[attr-defined]
                s.memory_used_mib,  # type: ignore[attr-defined]
                s.temperature_c,  # type: ignore[attr-defined]
                None if s.power_dw is None else s.power_dw / 10,  # type: ignore[attr-defined]
                s.ecc_uncorrected,  # type: ignore[attr-defined]
            )
        return found

    def unhealthy_gpus(self) -> dict[str, str]:
        """GPU UUID -> what the poller saw wrong, for every GPU it marked unhealthy."""
        with self.reader.connect() as conn:
            rows = conn.execute(select(_gpu.c.uuid, _gpu.c.problem).where(_gpu.c.healthy.is_(False)))
            return {r.uuid: r.problem or "unhealthy" for r in rows}

    def last_sample_time(self) -> float | None:
        """When the poller last wrote a sample of any GPU (epoch seconds), None if never: one
        index lookup per GPU, as the samples are keyed by (GPU, time)."""
        with self.reader.connect() as conn:
            ids = list(conn.execute(select(_gpu.c.id)).scalars())
            times = [conn.execute(_LAST_SAMPLE, {"gpu": i}).scalar() for i in ids]
        known = [t for t in times if t is not None]
        return max(known) / 1000 if known else None

    # -- telemetry: busy GPU-seconds per user ----------------------------------------------------

    def _users_of_owners(self) -> dict[int, str]:
        with self.reader.connect() as conn:
            rows = conn.execute(
                select(_owner.c.id, _owner.c.user).where(_owner.c.kind == WORKSPACE, _owner.c.user != "")
            )
            self._owner_users = {r.id: r.user for r in rows}
        return self._owner_users

    def _add(self, into: dict[str, float], owner_id: int, seconds: float) -> None:
        user = self._owner_users.get(owner_id)
        if user is None and owner_id not in self._owner_users:
            user = self._users_of_owners().get(owner_id)  # an owner the poller added since
        if user:
            into[user] = into.get(user, 0.0) + seconds

    def busy_history(self) -> tuple[dict[str, float], int]:
        """Busy GPU-seconds per user over all of the telemetry's history: hourly rollups, then
        minute rollups, then raw samples newer than both; with the newest raw sample's time
        (ms), the watermark for :meth:`busy_since`."""
        busy: dict[str, float] = {}
        self._users_of_owners()
        with self.reader.connect() as conn:
            state = {r.key: r.value for r in conn.execute(select(_state))}
            rolled_hours = int(state.get("rolled_3600", 0))
            rolled_minutes = int(state.get("rolled_60", rolled_hours))
            spans = ((HOUR, 0, rolled_hours), (MINUTE, rolled_hours, rolled_minutes))
            for resolution, start, end in spans:
                if end > start:
                    params = {"resolution": resolution, "start": start, "end": end}
                    for owner_id, seconds in conn.execute(_ROLLUP_BUSY, params):
                        self._add(busy, owner_id, float(seconds or 0.0))
        raw, watermark = self.busy_since(rolled_minutes * 1000 - 1)
        for user, seconds in raw.items():
            busy[user] = busy.get(user, 0.0) + seconds
        return busy, max(watermark, rolled_minutes * 1000 - 1)

    def busy_since(self, after_ms: int, until_ms: int | None = None) -> tuple[dict[str, float], int]:
        """Busy GPU-seconds per user in the raw samples after ``after_ms`` (up to ``until_ms``),
        and the newest sample time read (``after_ms`` when none)."""
        busy: dict[str, float] = {}
        newest = after_ms
        with self.reader.connect() as conn:
            ids = list(conn.execute(select(_gpu.c.id)).scalars())
            if not ids:
                return busy, newest
            params = {"ids": ids, "after": after_ms, "until": until_ms if until_ms is not None else 2**62}
            for owner_id, busy_pm_ms, last in conn.execute(_RAW_BUSY, params):
                self._add(busy, owner_id, float(busy_pm_ms or 0) / 1_000_000)  # PostgreSQL sums to Decimal
                newest = max(newest, int(last or after_ms))
        return busy, newest

    # -- the queue and the reclaimer ----------------------------------------------------------------

    def waiting(self) -> list[WaitingEntry]:
        query = select(_queue.c.user, _queue.c.server, _queue.c.gpus, _queue.c.submitted_at).where(
            _queue.c.status == WAITING
        )
        with self.reader.connect() as conn:
            return [WaitingEntry(r.user, r.server, r.gpus, r.submitted_at) for r in conn.execute(query)]

    def queue_rows(self, after_id: int, also: Collection[int] = ()) -> list[QueueRow]:
        """Queue entries after ``after_id`` and those of ``also`` (the ones still waiting at the
        previous read: they may have ended since), by primary key: never the whole history."""
        columns = (_queue.c.id, _queue.c.user, _queue.c.status, _queue.c.submitted_at, _queue.c.ended_at)
        with self.reader.connect() as conn:
            rows = list(conn.execute(select(*columns).where(_queue.c.id > after_id)))
            if also:
                rows += conn.execute(select(*columns).where(_queue.c.id.in_(sorted(also)), _queue.c.id <= after_id))
        return [QueueRow(r.id, r.user, r.status, r.submitted_at, r.ended_at) for r in rows]

    def reclaim_counts(self) -> ReclaimCounts:
        query = (
            select(_notices.c.reason, func.count(_notices.c.warned_at), func.count(_notices.c.reclaimed_at))
            .where(or_(_notices.c.warned_at.is_not(None), and_(_notices.c.reclaimed_at.is_not(None))))
            .group_by(_notices.c.reason)
        )
        warned: dict[str, int] = {}
        reclaimed: dict[str, int] = {}
        with self.reader.connect() as conn:
            for reason, n_warned, n_reclaimed in conn.execute(query):
                warned[reason or "idle"] = warned.get(reason or "idle", 0) + int(n_warned)
                reclaimed[reason or "idle"] = reclaimed.get(reason or "idle", 0) + int(n_reclaimed)
        return ReclaimCounts(warned, reclaimed)
