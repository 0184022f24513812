"""`labgpu migrate-ledger`: a lab's SQLite ledger with a week of data moved to PostgreSQL, checked by
what the hub and `labgpu usage` read back from both, and a PostgreSQL ledger that goes on working."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from labgpu.cli.main import main as labgpu_main
from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import QueueStore
from labgpu.db.session_store import SessionStore
from labgpu.db.telemetry_store import HeldSpan, TelemetryDB
from labgpu.gpus.allocator import NotEnoughGpus
from labgpu.gpus.telemetry import GpuReading, Owner, ProcessRecord, Retention
from tests.ledger_storm import storm_gpus

WEEK_START = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
USERS = [f"user{i}" for i in range(12)]


class Clock:
    def __init__(self) -> None:
        self.now = WEEK_START

    def __call__(self) -> datetime:
        return self.now


def a_week_of_lab(path: str) -> None:
    """Seven days of a 16-GPU lab: spawns every 10 minutes, some queued, sessions opened and
    closed, a poller sample of every GPU every 10 minutes, rolled up and pruned as it goes."""
    rng = random.Random(7)
    clock = Clock()
    gpus = storm_gpus(16)
    with Ledger(path, clock=clock) as ledger:
        ledger.sync_inventory(gpus)
        queue, sessions = QueueStore(ledger), SessionStore(ledger)
        telemetry = TelemetryDB(path, migrate=False, clock=clock)
        holding: set[str] = set()
        while clock.now < WEEK_START + timedelta(days=7):
            clock.now += timedelta(minutes=10)
            user = rng.choice(USERS)
            if user in holding:
                ledger.release(user, "", "stopped")
                sessions.end(user, "", "stopped")
                holding.discard(user)
            else:
                try:
                    granted = ledger.allocate(user, "", rng.choice([1, 2, 4]), group=f"g{USERS.index(user) % 3}")
                except NotEnoughGpus:
                    entry = queue.enqueue(user, "", 2, groups=["g0"])
                    queue.cancel(entry.id, "gave up")
                else:
                    holding.add(user)
                    sessions.open(
                        user,
                        "",
                        container_id=f"c-{user}-{clock.now:%j%H%M}",
                        image="labgpu/workspace:local",
                        image_digest="sha256:" + "a" * 64,
                        driver_version="580.159.04",
                        cuda_version="13.0",
                        torch_version="2.14.1",
                        gpu_uuids=granted.gpu_uuids,
                    )
            ts = clock.now.timestamp()
            telemetry.write_tick(
                ts,
                [
                    (GpuReading(uuid=g.uuid, index=g.index, utilization_gpu=rng.randrange(101)), 600.0, None)
                    for g in gpus
                ],
                [ProcessRecord(gpus[0].uuid, 4242, Owner("workspace", "c1", rng.choice(USERS), ""), 1000, 50, 0.5)],
            )
            if clock.now.minute == 0:
                telemetry.roll_up(ts)
                telemetry.prune(ts, Retention(raw_s=2 * 86400, minute_s=4 * 86400, hour_s=None))
        queue.close()
        sessions.close()
        telemetry.close()


@pytest.fixture(scope="module")
def week(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("week") / "ledger.sqlite")
    a_week_of_lab(path)
    return path


def read_back(url: str) -> dict:
    """What the hub, the reclaimer and `labgpu usage` read of a ledger."""
    since, until = WEEK_START.timestamp(), (WEEK_START + timedelta(days=7)).timestamp()
    with Ledger(url, migrate=False) as ledger, TelemetryDB(url, migrate=False) as telemetry:
        queue, sessions = QueueStore(ledger), SessionStore(ledger)
        held = [
            HeldSpan(h.user, "", h.start.timestamp(), h.end.timestamp() if h.end else None)
            for h in queue.held_intervals(WEEK_START, WEEK_START + timedelta(days=7))
        ]
        usage = telemetry.usage(since, until, held)
        figures = {
            "allocations": ledger.allocations(),
            "audit": ledger.audit(),
            "queue": queue.history(),
            "sessions": sessions.sessions(),
            "held_intervals": queue.held_intervals(WEEK_START, WEEK_START + timedelta(days=7)),
            "usage": {user: round(u.gpu_hours_busy, 6) for user, u in usage.by_user.items()},
            "busy": round(telemetry.busy_fraction([storm_gpus(16)[3].uuid], since, until) or 0.0, 9),
        }
        queue.close()
        sessions.close()
        return figures


def test_a_week_of_a_lab_moves_to_postgresql_and_reads_back_the_same(week, postgres_cluster, capsys):
    target = postgres_cluster.new_database(migrated=False)  # a bare database, as `createdb` makes
    try:
        assert labgpu_main(["migrate-ledger", week, target]) == 0
        out = capsys.readouterr().out
        assert "copied " in out and "GPU-hours held per user match" in out and "DIFFERS" not in out
        assert "allocation_events" in out and "telemetry_gpu_sample" in out
        source, copied = read_back(week), read_back(target)
        assert len(source["audit"]) > 500 and len(source["sessions"]) > 200  # a week's worth
        assert source["usage"] and len(source["held_intervals"]) > 200
        for what in source:
            assert copied[what] == source[what], what
        # The PostgreSQL ledger goes on: its ids continue after the copied ones.
        with Ledger(target) as ledger:
            for allocation in ledger.allocations():
                ledger.release(allocation.user, allocation.server, "moved")
            ledger.allocate("newcomer", "", 2)
            events = ledger.audit()
            assert events[-1].user == "newcomer" and events[-1].id > source["audit"][-1].id
        # A second run into a database that now holds the lab is refused, and changes nothing.
        assert labgpu_main(["migrate-ledger", week, target]) == 1
        assert "already holds rows in" in capsys.readouterr().err
    finally:
        postgres_cluster.drop_database(target)


def test_a_missing_source_or_an_unreachable_target_is_a_clear_error(tmp_path, week, capsys):
    assert labgpu_main(["migrate-ledger", str(tmp_path / "nope.sqlite"), "postgresql://x@127.0.0.1:1/labgpu"]) == 1
    assert "no ledger at" in capsys.readouterr().err
    assert labgpu_main(["migrate-ledger", week, "postgresql://x@127.0.0.1:1/labgpu"]) == 1
    assert "cannot open a database" in capsys.readouterr().err
