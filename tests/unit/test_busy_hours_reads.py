"""How the pages read busy hours (issue 14's lab page at 500 users on 64 GPUs): the owner rollups
are read as one range of migration 0013's covering index, never one seek per (owner, GPU), and
the whole hours' answer kept between requests stays exact as the poller rolls up more hours."""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, datetime

import pytest
from sqlalchemy import event

from labgpu.db.telemetry_store import TelemetryDB
from labgpu.db.telemetry_views import TelemetryViews
from labgpu.gpus.telemetry import WORKSPACE, GpuReading, Owner, ProcessRecord, Retention

START = 1_800_000_000.0  # a whole hour


def record(db: TelemetryDB, start: float, end: float, rng: random.Random) -> None:
    """5 s ticks over [start, end): alice on GPU-0, bob on GPU-1, rolled up and pruned as the poller does."""
    owners = [Owner(WORKSPACE, "c1", "alice", ""), Owner(WORKSPACE, "c2", "bob", "")]
    ts = start
    while ts < end:
        readings = [
            (GpuReading(uuid=f"GPU-{i}", index=i, utilization_gpu=rng.randint(0, 100)), 5.0, None) for i in (0, 1)
        ]
        processes = [
            ProcessRecord(f"GPU-{i}", 100 + i, owners[i], 1000, None, rng.choice([0.0, 0.4, 1.0])) for i in (0, 1)
        ]
        db.write_tick(ts, readings, processes)
        if int(ts) % 60 == 0:
            db.roll_up(ts)
            db.prune(ts, Retention(raw_s=3600, minute_s=4 * 3600))
        ts += 5


def expected(db: TelemetryDB, since: float, until: float) -> dict[str, float]:
    return {u: x.gpu_hours_busy for u, x in db.usage(since, until).by_user.items()}


def test_kept_whole_hours_stay_exact_as_more_hours_are_rolled_up(ledger_db):
    """One TelemetryViews for the service's life: each request's figures equal the raw samples'
    (TelemetryDB.usage) though the whole hours' answer is reused until the rolled-up bound moves."""
    path = ledger_db
    rng = random.Random(7)
    now = [START + 3 * 3600 + 40]
    db = TelemetryDB(path, clock=lambda: datetime.fromtimestamp(now[0], UTC))
    record(db, START, now[0], rng)
    with TelemetryViews(str(path)) as views:
        since = START + 17.5
        for _ in range(2):  # the second read comes from the kept hours
            assert views.busy_hours(since, now[0]) == pytest.approx(expected(db, since, now[0]), abs=1e-9)
        assert views._final_hours, "whole hours read from hour rollups are kept"
        record(db, now[0], START + 5 * 3600 + 25, rng)  # two more hours rolled up
        now[0] = START + 5 * 3600 + 25
        for period in [(since, now[0]), (START + 1800, START + 4 * 3600 + 600), (since, START + 3 * 3600 + 120)]:
            assert views.busy_hours(*period) == pytest.approx(expected(db, *period), abs=1e-9), period
    db.close()


def test_rollups_are_read_by_time_from_the_covering_index_not_per_owner_and_gpu(tmp_path):
    """SQLite's plan for every rollup read of busy_hours: one range of the (resolution, bucket,
    owner_id, busy_s) index, read alone (the primary key would seek every (owner, GPU) pair)."""
    path = tmp_path / "ledger.sqlite"
    db = TelemetryDB(path, clock=lambda: datetime.fromtimestamp(START + 2 * 3600 + 40, UTC))
    record(db, START, START + 2 * 3600 + 40, random.Random(3))
    statements: list[tuple[str, tuple]] = []
    with TelemetryViews(str(path)) as views:

        @event.listens_for(views.reader, "before_cursor_execute")
        def seen(conn, cursor, statement, parameters, context, executemany):
            if "telemetry_owner_rollup" in statement:
                statements.append((statement, parameters))

        assert views.busy_hours(START + 17.5, START + 2 * 3600 + 40)
    db.close()
    assert len(statements) >= 2  # the whole hours and the minutes at the period's start
    raw = sqlite3.connect(path)
    for statement, parameters in statements:
        plan = " ".join(row[-1] for row in raw.execute("EXPLAIN QUERY PLAN " + statement, parameters))
        assert "COVERING INDEX ix_telemetry_owner_rollup_bucket (resolution=? AND bucket>? AND bucket<?)" in plan, plan
    raw.close()
