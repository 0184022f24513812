"""The telemetry store: raw samples, per-minute and per-hour rollups, GPU health, and the
queries the scheduler asks (busy fraction, GPU-hours per user and group).

The only code that reads or writes the ``telemetry_*`` tables (:mod:`labgpu.db.tables`,
Alembic revision 0004), in the ledger's file. It keeps what the poller produces, as plain data
from :mod:`labgpu.gpus.telemetry`, and implements that module's ``TelemetryStore`` protocol, so
the poller and the store share types without importing each other. Rows are small on purpose
(integer ids for GPUs and owners, integer milliseconds, tables without rowids keyed by what
they are queried by) so the database stays bounded: see docs/telemetry.md and
benchmarks/poller.py for the measured size per GPU per day.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Table, and_, case, delete, func, insert, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql.elements import ColumnElement

from labgpu.db.engine import TELEMETRY_LOCK, Clock, Store, inserted_id, upsert
from labgpu.db.tables import (
    TelemetryGpu,
    TelemetryGpuRollup,
    TelemetryGpuSample,
    TelemetryOwner,
    TelemetryOwnerRollup,
    TelemetryProcessSample,
    TelemetryState,
)
from labgpu.gpus.telemetry import (
    HOUR,
    MINUTE,
    GpuReading,
    GpuRollup,
    GpuSample,
    Owner,
    OwnerRollup,
    OwnerSample,
    ProcessRecord,
    Retention,
    Tick,
    bucket_start,
    merge_gpu_rollups,
    merge_owner_rollups,
    rollup_gpu_samples,
    rollup_owner_samples,
)

GPU = TelemetryGpu.__table__
OWNER = TelemetryOwner.__table__
GPU_SAMPLE = TelemetryGpuSample.__table__
PROCESS_SAMPLE = TelemetryProcessSample.__table__
GPU_ROLLUP = TelemetryGpuRollup.__table__
OWNER_ROLLUP = TelemetryOwnerRollup.__table__
STATE = TelemetryState.__table__
_UNSEEN = object()  # a GPU whose health this store has not written yet


@dataclass(frozen=True)
class Usage:
    """GPU-hours over a period: held (allocated), in use (a process present), busy (kernels)."""

    gpu_hours_held: float = 0.0
    gpu_hours_in_use: float = 0.0
    gpu_hours_busy: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.gpu_hours_held + other.gpu_hours_held,
            self.gpu_hours_in_use + other.gpu_hours_in_use,
            self.gpu_hours_busy + other.gpu_hours_busy,
        )


@dataclass(frozen=True)
class HeldSpan:
    """One allocation from the ledger: ``user`` held ``gpu_uuid`` from ``start`` to ``end``."""

    user: str
    gpu_uuid: str
    start: float
    end: float | None = None


@dataclass
class UsageReport:
    """Usage per user and per group over [since, until)."""

    since: float
    until: float
    by_user: dict[str, Usage] = field(default_factory=dict)
    by_group: dict[str, Usage] = field(default_factory=dict)


# A rollup table's columns are its rollup's fields, with the GPU and the owner as their ids.
_ROLLUP_COLUMNS = {"gpu": "gpu_id", "owner": "owner_id"}
_ROLLUP_FIELDS = {column: name for name, column in _ROLLUP_COLUMNS.items()}
_RollupT = TypeVar("_RollupT", GpuRollup, OwnerRollup)


def _each_gpu(table: Table) -> ColumnElement[bool]:
    """``gpu_id IN (every GPU)``: a time range then reads each GPU's part of the table's key
    ``(gpu_id, ts_ms, ...)`` instead of the whole table (48 h of samples: 35,000 rows a GPU)."""
    return table.c.gpu_id.in_(select(GPU.c.id).scalar_subquery())


def _each_key(table: Table, resolution: int) -> list[ColumnElement[bool]]:
    """The same for the GPU rollups, keyed ``(resolution, gpu_id, bucket)``; the owner rollups
    have an index on ``(resolution, bucket, ...)`` (revision 0013) that a range uses as it is."""
    if "owner_id" in table.c:
        return [table.c.resolution == resolution]
    return [table.c.resolution == resolution, _each_gpu(table)]


def _rollup_row(resolution: int, rollup: GpuRollup | OwnerRollup) -> dict[str, Any]:
    """The row of ``telemetry_gpu_rollup`` or ``telemetry_owner_rollup`` that stores this rollup."""
    return {"resolution": resolution, **{_ROLLUP_COLUMNS.get(k, k): v for k, v in asdict(rollup).items()}}


def _at_most(value: ColumnElement[Any], limit: int) -> ColumnElement[Any]:
    """The smaller of a value and a limit, in SQL both databases speak (SQLite's two-argument
    ``min`` is PostgreSQL's ``least``)."""
    return case((value > limit, limit), else_=value)


def _rollup(kind: type[_RollupT], row: Row[Any]) -> _RollupT:
    """The rollup a row of its table stores (the inverse of :func:`_rollup_row`)."""
    return kind(**{_ROLLUP_FIELDS.get(k, k): v for k, v in row._mapping.items() if k != "resolution"})


class TelemetryDB(Store):
    """The poller's and the scheduler's door to the telemetry tables.

    Writes (the poller's ticks, rollups, pruning) start with ``BEGIN IMMEDIATE``, so a
    read-then-write rollup never works on a snapshot the hub moved on from; queries read a
    snapshot without taking the write lock. Opening it migrates the database, so the poller may
    start before the hub.
    """

    lock = TELEMETRY_LOCK  # a poller's tick waits for no grant, nor a grant for a tick

    def __init__(self, url_or_path: str | Path, migrate: bool = True, *, clock: Clock | None = None) -> None:
        super().__init__(url_or_path, clock=clock, migrate=migrate)
        self._gpu_ids: dict[str, int] = {}
        self._owner_ids: dict[Owner, int] = {}
        self._problems: dict[str, str | None] = {}  # last health written per GPU UUID
        self._gpu_sample_sql = self._insert_sql(GPU_SAMPLE)
        self._process_sample_sql = self._insert_sql(PROCESS_SAMPLE)
        each_gpu = "gpu_id IN (SELECT id FROM telemetry_gpu) AND ts_ms >= ? AND ts_ms < ?"
        self._select_raw_gpu_sql = self.sql(
            "SELECT gpu_id, ts_ms, dt_ms, util_gpu, memory_used_mib, temperature_c, power_dw, healthy "
            f"FROM telemetry_gpu_sample WHERE {each_gpu}"
        )
        self._select_raw_process_sql = self.sql(
            "SELECT gpu_id, owner_id, ts_ms, dt_ms, busy_pm, memory_used_mib "
            f"FROM telemetry_process_sample WHERE {each_gpu}"
        )

    # ---- writing (the poller) ---------------------------------------------------------------

    def write_tick(
        self,
        ts: float,
        gpus: Sequence[tuple[GpuReading, float, str | None]],
        processes: Sequence[ProcessRecord],
    ) -> None:
        """All samples of one tick in one transaction, and each GPU's health."""
        self.write_ticks([(ts, gpus, processes)])

    def write_ticks(self, ticks: Sequence[Tick]) -> None:
        """The samples of several ticks in one transaction, and each GPU's health as of each tick.

        The poller hands a few ticks at a time (``labgpu poller --write-every``): a transaction
        costs more than the rows in it. GPUs and owners met for the first time, and health
        changes, are written first (rare; their own transaction); then the samples go through the
        driver's cursor, one ``executemany`` per table, where SQLAlchemy's per-statement work
        would cost more than SQLite's."""
        if not ticks:
            return
        if self._has_news(ticks):
            with self.writer.begin() as conn:
                for ts, gpus, processes in ticks:  # in order: a problem's start is its first tick
                    for reading, _, problem in gpus:
                        self._gpu_id(conn, reading, ts, problem)
                    for p in processes:
                        self._owner_id(conn, p.owner)
        gpu_ids, owner_ids = self._gpu_ids, self._owner_ids
        gpu_rows: list[tuple[Any, ...]] = []
        process_rows: list[tuple[Any, ...]] = []
        for ts, gpus, processes in ticks:
            ts_ms = round(ts * 1000)
            dt_by_uuid: dict[str, int] = {}
            for reading, dt_s, problem in gpus:
                dt_ms = dt_by_uuid[reading.uuid] = round(dt_s * 1000)
                power = reading.power_w
                gpu_rows.append(
                    (
                        gpu_ids[reading.uuid],
                        ts_ms,
                        dt_ms,
                        reading.utilization_gpu,
                        reading.utilization_memory,
                        reading.memory_used_mib,
                        reading.temperature_c,
                        None if power is None else round(power * 10),
                        reading.throttle_reasons,
                        reading.ecc_uncorrected,
                        problem is None,
                    )
                )
            for p in processes:
                process_rows.append(
                    (
                        gpu_ids[p.gpu_uuid],
                        ts_ms,
                        p.pid,
                        owner_ids[p.owner],
                        dt_by_uuid[p.gpu_uuid],
                        p.used_memory_mib,
                        p.sm_util,
                        round(p.busy * 1000),
                    )
                )
        with self.raw_write() as cursor:
            if gpu_rows:
                cursor.executemany(self._gpu_sample_sql, gpu_rows)
            if process_rows:
                cursor.executemany(self._process_sample_sql, process_rows)

    def _has_news(self, ticks: Sequence[Tick]) -> bool:
        """Whether these ticks hold a GPU or owner not in the tables yet, or a health change."""
        for _, gpus, processes in ticks:
            for reading, _, problem in gpus:
                if reading.uuid not in self._gpu_ids or self._problems.get(reading.uuid, _UNSEEN) != problem:
                    return True
            for p in processes:
                if p.owner not in self._owner_ids:
                    return True
        return False

    def _insert_sql(self, table: Table) -> str:
        """``INSERT ... ON CONFLICT (key) DO UPDATE`` of every column, in the driver's placeholders
        (the same statement as :func:`labgpu.db.engine.upsert`, written out)."""
        columns = [column.name for column in table.columns]
        keys = [column.name for column in table.primary_key]
        changed = ", ".join(f"{name} = excluded.{name}" for name in columns if name not in keys)
        return self.sql(
            f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {changed}"
        )

    def _gpu_id(self, conn: Connection, reading: GpuReading, ts: float, problem: str | None) -> int:
        gpu_id = self._gpu_ids.get(reading.uuid)
        if gpu_id is None:
            gpu_id = conn.execute(select(GPU.c.id).where(GPU.c.uuid == reading.uuid)).scalar()
            if gpu_id is None:
                gpu_id = inserted_id(
                    conn.execute(
                        insert(GPU).values(
                            uuid=reading.uuid,
                            gpu_index=reading.index,
                            name=reading.name,
                            memory_total_mib=reading.memory_total_mib,
                            healthy=problem is None,
                            problem=problem,
                            problem_since=ts if problem else None,
                            first_seen=ts,
                        )
                    )
                )
            self._gpu_ids[reading.uuid] = gpu_id
        if reading.uuid not in self._problems or self._problems[reading.uuid] != problem:
            # Health and static facts change rarely: write them only when they change.
            values: dict[str, object] = {"healthy": problem is None, "problem": problem}
            values["problem_since"] = ts if problem else None
            values["gpu_index"] = reading.index
            if reading.name:
                values["name"] = reading.name
            if reading.memory_total_mib is not None:
                values["memory_total_mib"] = reading.memory_total_mib
            conn.execute(update(GPU).where(GPU.c.id == gpu_id).values(**values))
            self._problems[reading.uuid] = problem
        return gpu_id

    def _owner_id(self, conn: Connection, owner: Owner) -> int:
        owner_id = self._owner_ids.get(owner)
        if owner_id is None:
            where = and_(
                OWNER.c.kind == owner.kind,
                OWNER.c.container_id == owner.container_id,
                OWNER.c.user == owner.user,
                OWNER.c.server == owner.server,
            )
            owner_id = conn.execute(select(OWNER.c.id).where(where)).scalar()
            if owner_id is None:
                owner_id = inserted_id(
                    conn.execute(
                        insert(OWNER).values(
                            kind=owner.kind, container_id=owner.container_id, user=owner.user, server=owner.server
                        )
                    )
                )
            self._owner_ids[owner] = owner_id
        return owner_id

    # ---- rollups and retention --------------------------------------------------------------

    def roll_up(self, now: float) -> None:
        """Roll every finished minute of raw samples into minute rollups, and every finished
        hour of minute rollups into hour rollups; resumable after a restart."""
        with self.writer.begin() as conn:
            state = self._state(conn)
            minute_end = bucket_start(now, MINUTE)
            minute_start = state.get("rolled_60")
            if minute_start is None:
                first = conn.execute(select(func.min(GPU_SAMPLE.c.ts_ms))).scalar()
                minute_start = minute_end if first is None else bucket_start(first / 1000, MINUTE)
            if minute_end > minute_start:
                self._roll_raw(conn, int(minute_start), minute_end)
            self._set_state(conn, "rolled_60", max(minute_end, minute_start))

            hour_end = bucket_start(max(minute_end, minute_start), HOUR)
            hour_start = state.get("rolled_3600")
            if hour_start is None:
                first = conn.execute(
                    select(func.min(GPU_ROLLUP.c.bucket)).where(GPU_ROLLUP.c.resolution == MINUTE)
                ).scalar()
                hour_start = hour_end if first is None else bucket_start(first, HOUR)
            if hour_end > hour_start:
                self._roll_minutes(conn, int(hour_start), hour_end)
            self._set_state(conn, "rolled_3600", max(hour_end, hour_start))

    def _roll_raw(self, conn: Connection, start: int, end: int) -> None:
        """Raw samples of [start, end) into minute rollups, on the driver's cursor inside this
        transaction: every few minutes, hundreds of rows a GPU, where SQLAlchemy's rows and
        statements cost more than SQLite's work (issue 21)."""
        cursor = conn.connection.cursor()
        try:
            bounds = (start * 1000, end * 1000)
            cursor.execute(self._select_raw_gpu_sql, bounds)
            gpu_samples = [
                GpuSample(
                    gpu, ts / 1000, dt / 1000, util, memory, temperature, None if dw is None else dw / 10, bool(ok)
                )
                for gpu, ts, dt, util, memory, temperature, dw, ok in cursor.fetchall()
            ]
            cursor.execute(self._select_raw_process_sql, bounds)
            owner_samples = [
                OwnerSample(gpu, owner, ts / 1000, dt / 1000, pm / 1000, memory)
                for gpu, owner, ts, dt, pm, memory in cursor.fetchall()
            ]
            for table, rollups in (
                (GPU_ROLLUP, rollup_gpu_samples(gpu_samples, MINUTE)),
                (OWNER_ROLLUP, rollup_owner_samples(owner_samples, MINUTE)),
            ):
                if rollups:
                    columns = [column.name for column in table.columns]
                    rows = [_rollup_row(MINUTE, r) for r in rollups]
                    cursor.executemany(self._insert_sql(table), [tuple(row[c] for c in columns) for row in rows])
        finally:
            cursor.close()

    def _roll_minutes(self, conn: Connection, start: int, end: int) -> None:
        def in_range(table: Table) -> ColumnElement[bool]:
            return and_(*_each_key(table, MINUTE), table.c.bucket >= start, table.c.bucket < end)

        gpu_rollups = [_rollup(GpuRollup, r) for r in conn.execute(select(GPU_ROLLUP).where(in_range(GPU_ROLLUP)))]
        owner_rollups = [
            _rollup(OwnerRollup, r) for r in conn.execute(select(OWNER_ROLLUP).where(in_range(OWNER_ROLLUP)))
        ]
        self._insert_rollups(conn, HOUR, merge_gpu_rollups(gpu_rollups, HOUR), merge_owner_rollups(owner_rollups, HOUR))

    def _insert_rollups(
        self, conn: Connection, resolution: int, gpus: list[GpuRollup], owners: list[OwnerRollup]
    ) -> None:
        if gpus:
            upsert(conn, GPU_ROLLUP, [_rollup_row(resolution, r) for r in gpus])
        if owners:
            upsert(conn, OWNER_ROLLUP, [_rollup_row(resolution, r) for r in owners])

    def prune(self, now: float, retention: Retention) -> None:
        """Delete what is past its retention, never what is not yet rolled up; record from when
        each resolution is complete, so queries read each span from exactly one resolution."""
        with self.writer.begin() as conn:
            state = self._state(conn)
            if retention.raw_s is not None:
                # Whole minutes (a retention under an hour, in tests), else whole hours: raw
                # samples go once an hour, not a minute's worth every minute.
                step = MINUTE if retention.raw_s < HOUR else HOUR
                cutoff = min(bucket_start(now - retention.raw_s, step), state.get("rolled_60", 0))
                if cutoff > state.get("kept_raw", 0):
                    for table in (GPU_SAMPLE, PROCESS_SAMPLE):
                        conn.execute(delete(table).where(_each_gpu(table), table.c.ts_ms < cutoff * 1000))
                    self._set_state(conn, "kept_raw", cutoff)
            for resolution, keep_s, rolled in (
                (MINUTE, retention.minute_s, state.get("rolled_3600", 0)),
                (HOUR, retention.hour_s, float("inf")),
            ):
                if keep_s is None:
                    continue
                cutoff = min(bucket_start(now - keep_s, HOUR), rolled)
                if cutoff > state.get(f"kept_{resolution}", 0):
                    for table in (GPU_ROLLUP, OWNER_ROLLUP):
                        conn.execute(delete(table).where(*_each_key(table, resolution), table.c.bucket < cutoff))
                    self._set_state(conn, f"kept_{resolution}", cutoff)

    def _state(self, conn: Connection) -> dict[str, float]:
        return {row.key: float(row.value) for row in conn.execute(select(STATE))}

    def _set_state(self, conn: Connection, key: str, value: float) -> None:
        upsert(conn, STATE, {"key": key, "value": value})

    # ---- queries (the scheduler, the usage pages) -------------------------------------------

    def unhealthy_gpus(self) -> dict[str, str]:
        """GPU UUID -> what is wrong, for every GPU the allocator must not hand out."""
        with self.reader.connect() as conn:
            rows = conn.execute(select(GPU.c.uuid, GPU.c.problem).where(GPU.c.healthy.is_(False)))
            return {row.uuid: row.problem or "unhealthy" for row in rows}

    def busy_fraction(self, gpu_uuids: Iterable[str], since: float, until: float | None = None) -> float | None:
        """Share of [since, until) the given GPUs (an allocation's) spent running kernels,
        0..1, or None when nothing was recorded then (poller down, GPUs never seen)."""
        until = self.now().timestamp() if until is None else until
        seconds, busy = 0.0, 0.0
        with self.reader.connect() as conn:
            ids = self._ids_for(conn, gpu_uuids)
            if not ids:
                return None
            for source, start, end in self._spans(conn, since, until):
                if source == "raw":
                    row = conn.execute(
                        select(
                            func.sum(GPU_SAMPLE.c.dt_ms),
                            func.sum(GPU_SAMPLE.c.dt_ms * func.coalesce(GPU_SAMPLE.c.util_gpu, 0)),
                        ).where(
                            GPU_SAMPLE.c.gpu_id.in_(ids),
                            GPU_SAMPLE.c.ts_ms >= int(start * 1000),
                            GPU_SAMPLE.c.ts_ms < int(end * 1000),
                        )
                    ).one()
                    seconds += float(row[0] or 0) / 1000
                    busy += float(row[1] or 0) / 100_000
                else:
                    row = conn.execute(
                        select(func.sum(GPU_ROLLUP.c.seconds), func.sum(GPU_ROLLUP.c.busy_s)).where(
                            GPU_ROLLUP.c.resolution == source,
                            GPU_ROLLUP.c.gpu_id.in_(ids),
                            GPU_ROLLUP.c.bucket >= start,
                            GPU_ROLLUP.c.bucket < end,
                        )
                    ).one()
                    seconds += float(row[0] or 0.0)
                    busy += float(row[1] or 0.0)
        return None if seconds <= 0 else busy / seconds

    def usage(
        self,
        since: float,
        until: float,
        held: Iterable[HeldSpan] = (),
        groups_of: dict[str, Sequence[str]] | None = None,
    ) -> UsageReport:
        """GPU-hours per user and per group over [since, until): held (from the ledger's
        allocations, passed in as ``held``), in use and busy (from the samples of processes in
        each user's workspaces)."""
        in_use: dict[str, float] = {}
        busy: dict[str, float] = {}
        with self.reader.connect() as conn:
            users = {
                row.id: row.user for row in conn.execute(select(OWNER.c.id, OWNER.c.user).where(OWNER.c.user != ""))
            }
            if users:
                for source, start, end in self._spans(conn, since, until):
                    for owner_id, seconds, busy_s in self._owner_sums(conn, source, start, end, list(users)):
                        user = users[owner_id]
                        in_use[user] = in_use.get(user, 0.0) + seconds
                        busy[user] = busy.get(user, 0.0) + busy_s
        held_s: dict[str, float] = {}
        for span in held:
            overlap = min(until, span.end if span.end is not None else until) - max(since, span.start)
            if overlap > 0:
                held_s[span.user] = held_s.get(span.user, 0.0) + overlap
        report = UsageReport(since, until)
        for user in sorted(set(in_use) | set(busy) | set(held_s)):
            report.by_user[user] = Usage(
                held_s.get(user, 0.0) / HOUR, in_use.get(user, 0.0) / HOUR, busy.get(user, 0.0) / HOUR
            )
        for user, usage in report.by_user.items():
            for group in (groups_of or {}).get(user, ()):
                report.by_group[group] = report.by_group.get(group, Usage()) + usage
        return report

    def _owner_sums(
        self, conn: Connection, source: str | int, start: float, end: float, owner_ids: list[int]
    ) -> list[tuple[int, float, float]]:
        if source == "raw":
            # Several processes of one owner on one GPU in one tick count that GPU-second once.
            per_tick = (
                select(
                    PROCESS_SAMPLE.c.owner_id,
                    func.max(PROCESS_SAMPLE.c.dt_ms).label("dt_ms"),
                    _at_most(func.sum(PROCESS_SAMPLE.c.busy_pm), 1000).label("busy_pm"),
                )
                .where(
                    PROCESS_SAMPLE.c.owner_id.in_(owner_ids),
                    PROCESS_SAMPLE.c.ts_ms >= int(start * 1000),
                    PROCESS_SAMPLE.c.ts_ms < int(end * 1000),
                )
                .group_by(PROCESS_SAMPLE.c.owner_id, PROCESS_SAMPLE.c.gpu_id, PROCESS_SAMPLE.c.ts_ms)
                .subquery()
            )
            rows = conn.execute(
                select(
                    per_tick.c.owner_id, func.sum(per_tick.c.dt_ms), func.sum(per_tick.c.dt_ms * per_tick.c.busy_pm)
                ).group_by(per_tick.c.owner_id)
            )
            return [(r[0], float(r[1] or 0) / 1000, float(r[2] or 0) / 1_000_000) for r in rows]
        rows = conn.execute(
            select(OWNER_ROLLUP.c.owner_id, func.sum(OWNER_ROLLUP.c.seconds), func.sum(OWNER_ROLLUP.c.busy_s))
            .where(
                OWNER_ROLLUP.c.resolution == source,
                OWNER_ROLLUP.c.owner_id.in_(owner_ids),
                OWNER_ROLLUP.c.bucket >= start,
                OWNER_ROLLUP.c.bucket < end,
            )
            .group_by(OWNER_ROLLUP.c.owner_id)
        )
        return [(r[0], float(r[1] or 0.0), float(r[2] or 0.0)) for r in rows]

    def _ids_for(self, conn: Connection, gpu_uuids: Iterable[str]) -> list[int]:
        return list(conn.execute(select(GPU.c.id).where(GPU.c.uuid.in_(list(gpu_uuids)))).scalars())

    def _spans(self, conn: Connection, since: float, until: float) -> list[tuple[str | int, float, float]]:
        """Split [since, until) into disjoint spans, each read from the finest resolution still
        kept for it: raw samples, then minute rollups, then hour rollups."""
        state = self._state(conn)
        kept_raw = state.get("kept_raw", 0.0)
        kept_minute = state.get("kept_60", 0.0)
        spans: list[tuple[str | int, float, float]] = []
        if until > max(since, kept_raw):
            spans.append(("raw", max(since, kept_raw), until))
        if min(until, kept_raw) > max(since, kept_minute):
            spans.append((MINUTE, max(since, kept_minute), min(until, kept_raw)))
        if min(until, kept_minute) > since:
            spans.append((HOUR, since, min(until, kept_minute)))
        return spans

    def size_bytes(self) -> int:
        """Bytes the database takes (SQLite: pages in use; PostgreSQL: the database's size on
        disk), for the growth benchmark."""
        with self.reader.connect() as conn:
            if self.postgresql:
                return int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar() or 0)
            page_size = conn.exec_driver_sql("PRAGMA page_size").scalar() or 0
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar() or 0
            free = conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0
            return int(page_size * (pages - free))
