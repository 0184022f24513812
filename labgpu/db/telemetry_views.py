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

from sqlalchemy import and_, func, select
from sqlalchemy.exc import DBAPIError

from labgpu.db.engine import Store
from labgpu.db.telemetry_store import GPU, GPU_ROLLUP, GPU_SAMPLE, OWNER, OWNER_ROLLUP, STATE
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

    def latest(self, within: float = 120.0) -> dict[str, GpuNow]:
        """GPU UUID -> its newest sample of the last ``within`` seconds (none: poller silent)."""
        since_ms = int((self.now().timestamp() - within) * 1000)
        # Per GPU, its newest sample through the (gpu_id, ts_ms) key: one index probe each.
        inner = GPU_SAMPLE.alias("newest")
        newest = select(func.max(inner.c.ts_ms)).where(inner.c.gpu_id == GPU.c.id).correlate(GPU).scalar_subquery()
        query = (
            select(
                GPU.c.uuid,
                GPU_SAMPLE.c.ts_ms,
                GPU_SAMPLE.c.util_gpu,
                GPU_SAMPLE.c.memory_used_mib,
                GPU_SAMPLE.c.temperature_c,
                GPU_SAMPLE.c.healthy,
            )
            .select_from(GPU)
            .join(GPU_SAMPLE, and_(GPU_SAMPLE.c.gpu_id == GPU.c.id, GPU_SAMPLE.c.ts_ms == newest))
            .where(GPU_SAMPLE.c.ts_ms >= since_ms)
        )
        try:
            with self.reader.connect() as conn:
                rows = conn.execute(query).all()
        except DBAPIError:  # no telemetry tables (no poller ever ran): nothing to show
            return {}
        return {
            r.uuid: GpuNow(r.ts_ms / 1000, r.util_gpu, r.memory_used_mib, r.temperature_c, bool(r.healthy))
            for r in rows
        }

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
        for r in rows:
            util = 100.0 * r.busy_s / r.seconds if r.seconds else 0.0
            series.setdefault(r.uuid, []).append((float(r.bucket), util, int(r.memory_used_max_mib or 0)))
        return series

    def busy_per_day(
        self, since: float, until: float, users: Iterable[str] | None = None
    ) -> dict[str, dict[date, float]]:
        """Busy GPU-hours per user per UTC day over [since, until), from the hour rollups (whole
        hours: the chart's bars; the pages' totals come from :func:`labgpu.db.usage.busy_hours_of`,
        as ``labgpu usage``'s do)."""
        wanted = None if users is None else set(users)
        day = (OWNER_ROLLUP.c.bucket - OWNER_ROLLUP.c.bucket % DAY).label("day")
        days: dict[str, dict[date, float]] = {}
        try:
            with self.reader.connect() as conn:
                owners = {
                    row.id: row.user
                    for row in conn.execute(select(OWNER.c.id, OWNER.c.user).where(OWNER.c.user != ""))
                    if wanted is None or row.user in wanted
                }
                if not owners:
                    return {}
                # The key is (resolution, owner_id, gpu_id, bucket): name the owners.
                rows = conn.execute(
                    select(OWNER_ROLLUP.c.owner_id, day, func.sum(OWNER_ROLLUP.c.busy_s))
                    .where(
                        OWNER_ROLLUP.c.resolution == HOUR,
                        OWNER_ROLLUP.c.owner_id.in_(list(owners)),
                        OWNER_ROLLUP.c.bucket >= since - since % HOUR,
                        OWNER_ROLLUP.c.bucket < until,
                    )
                    .group_by(OWNER_ROLLUP.c.owner_id, day)
                ).all()
        except DBAPIError:  # no telemetry tables (no poller ever ran)
            return {}
        for owner_id, start, busy_s in rows:
            when = datetime.fromtimestamp(start, UTC).date()
            per_user = days.setdefault(owners[owner_id], {})
            per_user[when] = per_user.get(when, 0.0) + (busy_s or 0.0) / HOUR
        return days

    def rolled_up_to(self) -> float | None:
        """Until when hour rollups exist (the busy bars stop there; later hours are not whole)."""
        try:
            with self.reader.connect() as conn:
                value = conn.execute(select(STATE.c.value).where(STATE.c.key == "rolled_3600")).scalar()
        except DBAPIError:
            return None
        return None if value is None else float(value)
