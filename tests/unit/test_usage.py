"""`labgpu usage` on a real ledger (SQLite and PostgreSQL): GPU-hours held, efficiency, queue waits
and reclaims."""

import csv
import io
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import QueueStore
from labgpu.db.usage import usage_rows
from labgpu.gpus.inventory import ReplayInventory

DATA = Path(__file__).parent.parent / "data"
QUOTAS = """
groups:
  vision: {members: [alice, bob]}
"""


class Clock:
    def __init__(self, start):
        self.now = start

    def __call__(self):
        return self.now


@pytest.fixture
def history(ledger_db):
    """Five hours ago: alice holds 2 GPUs for 3 h; bob waits 30 min in the queue, then holds 4
    GPUs for 1 h; carol's 2 idle GPUs are reclaimed after 1 h idle."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5)
    clock = Clock(start)
    path = ledger_db
    with Ledger(path, clock=clock) as ledger:
        ledger.sync_inventory(ReplayInventory(DATA / "a100x8-two-nvlink-islands.json").gpus())
        store = QueueStore(ledger)
        ledger.allocate("alice", "", 2)
        ledger.allocate("carol", "", 2)
        notice = store.watch("carol", "", ledger.allocation_for("carol").since, 2)
        entry = store.enqueue("bob", "", 4)
        clock.now += timedelta(minutes=30)
        bob = ledger.allocate("bob", "", 4)
        store.grant(entry.id, bob.gpu_uuids)
        clock.now += timedelta(minutes=30)
        store.record_reclaim(notice.id, reason="idle", message="idle", idle_for=3600.0)
        ledger.release("carol", "", "reclaimed")
        clock.now += timedelta(minutes=30)
        ledger.release("bob", "")
        clock.now += timedelta(minutes=90)
        ledger.release("alice", "")
        store.close()
    return path, start


def test_usage_per_user(history):
    path, start = history
    with Ledger(path) as ledger:
        store = QueueStore(ledger)
        rows = {
            r.name: r
            for r in usage_rows(
                store, start - timedelta(days=1), start + timedelta(hours=6), busy_hours={"alice": 3.0, "bob": 1.0}
            )
        }
        store.close()
    assert rows["alice"].gpu_hours_held == pytest.approx(6.0)  # 2 GPUs x 3 h
    assert rows["alice"].efficiency == pytest.approx(0.5)
    assert rows["bob"].gpu_hours_held == pytest.approx(4.0)
    assert (rows["bob"].queued, rows["bob"].mean_wait_hours) == (1, pytest.approx(0.5))
    assert rows["carol"].gpu_hours_held == pytest.approx(2.0)
    assert (rows["carol"].reclaims, rows["carol"].reclaimed_gpu_hours) == (1, pytest.approx(2.0))
    assert rows["carol"].gpu_hours_busy == 0.0  # telemetry saw nothing of hers


def test_usage_counts_only_the_period(history):
    path, start = history
    with Ledger(path) as ledger:
        store = QueueStore(ledger)
        # the last hour of alice's allocation only
        rows = usage_rows(store, start + timedelta(hours=2), start + timedelta(hours=3))
        store.close()
    assert [(r.name, round(r.gpu_hours_held, 3)) for r in rows] == [("alice", 2.0)]
    assert rows[0].gpu_hours_busy is None  # no telemetry: shown as "-"


def test_usage_command_by_group_as_csv(history, tmp_path):
    path, _ = history
    quotas = tmp_path / "quotas.yaml"
    quotas.write_text(QUOTAS)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "labgpu.cli",
            "usage",
            "--since",
            "1d",
            "--by",
            "group",
            "--csv",
            "--db",
            str(path),
            "--quotas",
            str(quotas),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {r["group"]: r for r in csv.DictReader(io.StringIO(out))}
    assert set(rows) == {"vision", "(no group)"}
    assert float(rows["vision"]["gpu_h_held"]) == pytest.approx(10.0)
    assert rows["vision"]["queued"] == "1" and rows["vision"]["mean_wait_h"] == "0.50"
    assert rows["(no group)"]["reclaims"] == "1"


def test_usage_command_says_where_the_ledger_is_missing(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "labgpu.cli", "usage", "--db", str(tmp_path / "nope.sqlite")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "no ledger at" in done.stderr and "--db" in done.stderr


def test_usage_help_says_groups_come_from_the_quota_files_alone():
    done = subprocess.run(
        [sys.executable, "-m", "labgpu.cli", "usage", "--help"], capture_output=True, text=True, check=True
    )
    help_text = " ".join(done.stdout.split())
    assert "members lists in the quota files" in help_text and "no hub token" in help_text
