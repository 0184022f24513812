"""Read-only views of the telemetry tables for the hub's pages: each GPU's latest sample, a
per-minute series of the last hour (the board's sparklines) and busy GPU-hours per user per day
(the usage charts). The poller writes and the scheduler queries through
:mod:`labgpu.db.telemetry_store`; these are the pages' few extra reads, kept to what indexes
answer quickly (sample and rollup keys start with the GPU or owner, then the time), in SQL
both SQLite and PostgreSQL speak.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import case, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from labgpu.db.engine import Store
from labgpu.db.telemetry_store import GPU, GPU_ROLLUP, GPU_SAMPLE, OWNER, OWNER_ROLLUP, PROCESS_SAMPLE, STATE
from labgpu.gpus.telemetry import HOUR, MINUTE

DAY = 86400


@dataclass(frozen=True)
class GpuNow:
    """A GPU's latest sample."""

    at: float  # seconds since the epoch
    util: int | None  # percent
    memory_used_mib: int | None
    temperature_c: int | None
    healthy: bool


class TelemetryViews(Store):
    """The pages' reads of the telemetry the poller records (never writes)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, migrate=False)
        # Busy seconds read from hour rollups of whole hours already rolled up: those rows are
        # final (the poller rolls up an hour once, after its last minute), so each answer is
        # kept until the rolled-up or pruned bound moves (a page's 30 days: ~6,500 rows a read).
        self._final_hours: dict[tuple[object, ...], list[tuple[int, int | None, float]]] = {}

    def latest(self, within: float = 120.0) -> dict[str, GpuNow]:
        """GPU UUID -> its newest sample of the last ``within`` seconds (none: poller silent)."""
        since_ms = int((self.now().timestamp() - within) * 1000)
        newest: dict[str, GpuNow] = {}
        try:
            with self.reader.connect() as conn:
                uuids = dict(conn.execute(select(GPU.c.id, GPU.c.uuid)).all())
                # The samples of the last `within` seconds, each GPU's a range of its key.
                rows = conn.execute(
                    select(
                        GPU_SAMPLE.c.gpu_id,
                        GPU_SAMPLE.c.ts_ms,
                        GPU_SAMPLE.c.util_gpu,
                        GPU_SAMPLE.c.memory_used_mib,
                        GPU_SAMPLE.c.temperature_c,
                        GPU_SAMPLE.c.healthy,
                    )
                    .where(GPU_SAMPLE.c.gpu_id.in_(list(uuids)), GPU_SAMPLE.c.ts_ms >= since_ms)
                    .order_by(GPU_SAMPLE.c.gpu_id, GPU_SAMPLE.c.ts_ms)
                ).all()
        except DBAPIError:  # no telemetry tables (no poller ever ran): nothing to show
            return {}
        for r in rows:  # oldest first: the last one per GPU stays
            newest[uuids[r.gpu_id]] = GpuNow(
                r.ts_ms / 1000, r.util_gpu, r.memory_used_mib, r.temperature_c, bool(r.healthy)
            )
        return newest

    def minute_series(self, since: float, until: float) -> dict[str, list[tuple[float, float, int]]]:
        """GPU UUID -> [(minute, mean utilization %, peak memory MiB)] from the minute rollups of
        [since, until), oldest first (the board's one-hour sparklines)."""
        query = (
            select(
                GPU.c.uuid,
                GPU_ROLLUP.c.bucket,
                GPU_ROLLUP.c.seconds,
                GPU_ROLLUP.c.busy_s,
                GPU_ROLLUP.c.memory_used_max_mib,
            )
            .join(GPU, GPU.c.id == GPU_ROLLUP.c.gpu_id)
            .order_by(GPU_ROLLUP.c.gpu_id, GPU_ROLLUP.c.bucket)
        )
        series: dict[str, list[tuple[float, float, int]]] = {}
        try:
            with self.reader.connect() as conn:
                ids = list(conn.execute(select(GPU.c.id)).scalars())
                # The key is (resolution, gpu_id, bucket): name the GPUs so each is a range read.
                rows = conn.execute(
                    query.where(
                        GPU_ROLLUP.c.resolution == MINUTE,
                        GPU_ROLLUP.c.gpu_id.in_(ids),
                        GPU_ROLLUP.c.bucket >= since,
                        GPU_ROLLUP.c.bucket < until,
                    )
                ).all()
        except DBAPIError:
            return {}
        points: list[tuple[float, float, int]] = []
        last = None
        for uuid, bucket, seconds, busy_s, memory in rows:  # by GPU, then time (tuples: no Row lookups)
            if uuid != last:
                points = series.setdefault(uuid, [])
                last = uuid
            points.append((float(bucket), 100.0 * busy_s / seconds if seconds else 0.0, int(memory or 0)))
        return series

    def busy_hours(
        self,
        since: float,
        until: float,
        per_day: dict[str, dict[date, float]] | None = None,
        users: Iterable[str] | None = None,
    ) -> dict[str, float] | None:
        """Busy GPU-hours per user over [since, until), or None when no workspace process was
        recorded in it. Read from the coarsest data that is complete for each span: hour rollups
        for the whole hours, minute rollups around them, raw samples after the last rolled-up
        minute. Rollups are exact sums of the raw samples (labgpu.gpus.telemetry), so this is
        what summing every raw sample would give, at the cost of ~one row per GPU-hour.
        ``per_day``, when given, gets the whole hours' busy hours per user per UTC day (the
        charts' bars; the minutes at the period's two ends are in the totals only). ``users``:
        only theirs (one user's page)."""
        wanted = None if users is None else set(users)
        try:
            with self.reader.connect() as conn:
                state = {row.key: row.value for row in conn.execute(select(STATE))}
                owners = {
                    row.id: row.user
                    for row in conn.execute(select(OWNER.c.id, OWNER.c.user).where(OWNER.c.user != ""))
                    if wanted is None or row.user in wanted
                }
                if not owners:
                    return None
                spans = self._spans(since, until, state)
                gpu_ids = list(conn.execute(select(GPU.c.id)).scalars())
                busy: dict[str, float] = {}
                seen = False
                dates: dict[int, date] = {}
                for source, start, end in spans:
                    for owner_id, day, busy_s in self._read_span(conn, state, source, start, end, owners, gpu_ids):
                        seen = True
                        user = owners[owner_id]
                        busy[user] = busy.get(user, 0.0) + busy_s / HOUR
                        if per_day is not None and day is not None:
                            days = per_day.setdefault(user, {})
                            when = dates.get(day) or dates.setdefault(day, datetime.fromtimestamp(day, UTC).date())
                            days[when] = days.get(when, 0.0) + busy_s / HOUR
        except DBAPIError:  # no telemetry tables (no poller ever ran)
            return None
        return busy if seen else None

    def _read_span(
        self,
        conn: Connection,
        state: dict[str, float],
        source: int | str,
        start: float,
        end: float,
        owners: dict[int, str],
        gpu_ids: list[int],
    ) -> list[tuple[int, int | None, float]]:
        """:meth:`_owner_busy`, kept for spans of final hour rollups (see ``_final_hours``)."""
        if source != HOUR or end > state.get("rolled_3600", 0.0):
            return self._owner_busy(conn, source, start, end, list(owners), gpu_ids)
        key = (start, end, state.get("rolled_3600"), state.get("kept_3600"), tuple(owners))
        rows = self._final_hours.get(key)
        if rows is None:
            rows = self._owner_busy(conn, source, start, end, list(owners), gpu_ids)
            if len(self._final_hours) >= 32:  # one per page and period in use: keep it small
                self._final_hours.clear()
            self._final_hours[key] = rows
        return rows

    @staticmethod
    def _spans(since: float, until: float, state: dict[str, float]) -> list[tuple[int | str, float, float]]:
        """[since, until) as whole hours (hour rollups), whole minutes (minute rollups; hour
        rollups where those are pruned) and the partial minutes at both ends and the minutes not
        rolled up yet (raw samples, where still kept; else left out, as TelemetryDB.usage does)."""
        rolled_60, rolled_3600 = state.get("rolled_60", 0.0), state.get("rolled_3600", 0.0)
        kept_raw, kept_60 = state.get("kept_raw", 0.0), state.get("kept_60", 0.0)

        def ceil(t: float, step: float) -> float:
            return t if t % step == 0 else t - t % step + step

        first_minute = ceil(since, MINUTE)
        last_minute = max(first_minute, min(until - until % MINUTE, rolled_60))
        spans: list[tuple[int | str, float, float]] = []
        for start, end in ((since, min(first_minute, until)), (last_minute, until)):
            if max(start, kept_raw) < end:
                spans.append(("raw", max(start, kept_raw), end))
        first_hour = ceil(first_minute, HOUR)
        last_hour = min(last_minute - last_minute % HOUR, rolled_3600)
        minutes = [(first_minute, last_minute)]
        if first_hour < last_hour:
            spans.append((HOUR, first_hour, last_hour))
            minutes = [(first_minute, first_hour), (last_hour, last_minute)]
        for start, end in minutes:
            if start < end:
                spans.append((MINUTE if start >= kept_60 else HOUR, start, end))
        return spans

    def _owner_busy(
        self, conn: Connection, source: int | str, start: float, end: float, owner_ids: list[int], gpu_ids: list[int]
    ) -> list[tuple[int, int | None, float]]:
        """(owner, UTC day (hour rollups) or None, busy GPU-seconds) over [start, end) from one
        source. Raw samples: the GPUs are named so that the key (gpu_id, ts_ms, ...) narrows the
        read to the span; rollups: one range of the index (resolution, bucket, owner_id, busy_s),
        which holds all the query reads (migration 0013)."""
        if source == "raw":
            # As the rollups count it: several processes of one owner on one GPU in one tick
            # count that GPU-second once (labgpu.gpus.telemetry.rollup_owner_samples).
            per_tick = (
                select(
                    PROCESS_SAMPLE.c.owner_id,
                    func.max(PROCESS_SAMPLE.c.dt_ms).label("dt_ms"),
                    func.sum(PROCESS_SAMPLE.c.busy_pm).label("busy_pm"),
                )
                .where(
                    PROCESS_SAMPLE.c.gpu_id.in_(gpu_ids),
                    PROCESS_SAMPLE.c.owner_id.in_(owner_ids),
                    PROCESS_SAMPLE.c.ts_ms >= int(start * 1000),
                    PROCESS_SAMPLE.c.ts_ms < int(end * 1000),
                )
                .group_by(PROCESS_SAMPLE.c.owner_id, PROCESS_SAMPLE.c.gpu_id, PROCESS_SAMPLE.c.ts_ms)
                .subquery()
            )
            capped = case((per_tick.c.busy_pm > 1000, 1000), else_=per_tick.c.busy_pm)
            raw = conn.execute(
                select(per_tick.c.owner_id, func.sum(per_tick.c.dt_ms * capped)).group_by(per_tick.c.owner_id)
            ).all()
            return [(r[0], None, float(r[1] or 0) / 1_000_000) for r in raw]  # PostgreSQL sums integers as numeric
        # Hours: per UTC day too (the bars). Minutes: per owner only (PostgreSQL refuses GROUP BY NULL).
        per_day = [(OWNER_ROLLUP.c.bucket - OWNER_ROLLUP.c.bucket % DAY).label("day")] if source == HOUR else []
        rolled = conn.execute(
            select(OWNER_ROLLUP.c.owner_id, func.sum(OWNER_ROLLUP.c.busy_s), *per_day)
            .where(
                OWNER_ROLLUP.c.resolution == source,
                OWNER_ROLLUP.c.owner_id.in_(owner_ids),
                OWNER_ROLLUP.c.bucket >= start,
                OWNER_ROLLUP.c.bucket < end,
            )
            .group_by(OWNER_ROLLUP.c.owner_id, *per_day)
        ).all()
        return [(r[0], int(r[2]) if per_day else None, float(r[1] or 0.0)) for r in rolled]

    def rolled_up_to(self) -> float | None:
        """Until when hour rollups exist (the busy bars stop there; later hours are not whole)."""
        try:
            with self.reader.connect() as conn:
                value = conn.execute(select(STATE.c.value).where(STATE.c.key == "rolled_3600")).scalar()
        except DBAPIError:
            return None
        return None if value is None else float(value)
