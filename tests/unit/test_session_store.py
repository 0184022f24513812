"""Workspace sessions in the ledger (SQLite and PostgreSQL): what `labgpu usage --sessions` shows
to reproduce a result."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from labgpu.db.ledger import Ledger
from labgpu.db.session_store import SessionStore


class Clock:
    def __init__(self):
        self.now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)

    def __call__(self):
        return self.now


def test_open_end_and_list(ledger_db):
    clock = Clock()
    ledger = Ledger(ledger_db)
    store = SessionStore(ledger, clock=clock)
    store.open(
        "alice",
        "",
        container_id="c1",
        image="labgpu/workspace:local",
        image_digest="sha256:aaa",
        driver_version="580.159.04",
        cuda_version="13.0",
        torch_version="2.14.1",
        gpu_uuids=["GPU-1", "GPU-2"],
    )
    clock.now += timedelta(hours=2)
    assert store.end("alice", "", "stopped") == 1
    assert store.end("alice", "", "stopped") == 0  # nothing open any more
    (session,) = store.sessions()
    assert session.gpu_uuids == ("GPU-1", "GPU-2")
    assert session.ended_at - session.started_at == timedelta(hours=2)
    assert (session.image_digest, session.driver_version, session.cuda_version) == ("sha256:aaa", "580.159.04", "13.0")
    # A session that ended before the period is not listed.
    assert store.sessions(since=clock.now + timedelta(minutes=1)) == []
    store.close()
    ledger.close()


def test_a_new_start_closes_a_session_left_open(ledger_db):
    ledger = Ledger(ledger_db)
    store = SessionStore(ledger)
    for container in ("c1", "c2"):
        store.open(
            "bob",
            "gpu",
            container_id=container,
            image="img",
            image_digest="sha256:b",
            driver_version=None,
            cuda_version=None,
            torch_version=None,
            gpu_uuids=[],
        )
    first, second = store.sessions()
    assert first.end_reason == "superseded by a new start" and second.ended_at is None
    store.close()
    ledger.close()


def test_usage_sessions_cli(ledger_db):
    path = ledger_db
    ledger = Ledger(path)
    store = SessionStore(ledger)
    store.open(
        "carol",
        "",
        container_id="c9",
        image="labgpu/workspace:local",
        image_digest="sha256:" + "c" * 64,
        driver_version="580.159.04",
        cuda_version="13.0",
        torch_version="2.14.1+cu130",
        gpu_uuids=["GPU-9"],
    )
    store.close()
    ledger.close()
    done = subprocess.run(
        [sys.executable, "-m", "labgpu.cli", "usage", "--sessions", "--csv", "--db", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    (row,) = list(csv.DictReader(io.StringIO(done.stdout)))
    assert row["server"] == "carol" and row["ended"] == "running"
    assert row["digest"] == "sha256:" + "c" * 64 and row["cuda"] == "13.0" and row["gpus"] == "GPU-9"
    table = subprocess.run(
        [sys.executable, "-m", "labgpu.cli", "usage", "--sessions", "--db", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0 and "580.159.04" in table.stdout and "IMAGE" in table.stdout.splitlines()[0]
