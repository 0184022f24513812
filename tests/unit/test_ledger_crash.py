"""A hub process killed (SIGKILL) inside and after an allocation: the ledger stays consistent, on
SQLite and PostgreSQL (where the dead client's transaction, and with it its advisory lock, ends)."""

import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from labgpu.db.engine import is_postgresql
from labgpu.db.ledger import Ledger
from labgpu.gpus.inventory import ReplayInventory
from labgpu.gpus.reconcile import reconcile

DATA = Path(__file__).parent.parent / "data"


def hub_that_dies_mid_grant(path: str, inside) -> None:
    ledger = Ledger(path)
    write_grant = ledger._insert_allocation

    def stall(*args, **kwargs):
        written = write_grant(*args, **kwargs)
        inside.set()  # the grant is written but not committed, and the write lock is held
        time.sleep(60)
        return written

    ledger._insert_allocation = stall  # type: ignore[method-assign]
    ledger.allocate("alice", "", 2)


def hub_that_dies_after_grant(path: str, granted) -> None:
    ledger = Ledger(path)
    ledger.allocate("bob", "", 3)
    granted.set()
    time.sleep(60)


@pytest.fixture
def ledger_path(ledger_db):
    path = ledger_db
    with Ledger(path) as ledger:
        ledger.sync_inventory(ReplayInventory(DATA / "a100x8-two-nvlink-islands.json").gpus())
    return path


def kill_when(target, path, timeout=30):
    context = multiprocessing.get_context("fork")
    flag = context.Event()
    process = context.Process(target=target, args=(str(path), flag))
    process.start()
    assert flag.wait(timeout), "the hub process never reached the point to kill it at"
    os.kill(process.pid, signal.SIGKILL)
    process.join(10)
    assert process.exitcode == -signal.SIGKILL


def test_hub_killed_inside_a_grant_leaves_no_trace_and_no_lock(ledger_path):
    kill_when(hub_that_dies_mid_grant, ledger_path)
    start = time.monotonic()
    with Ledger(ledger_path) as ledger:  # the restarted hub
        assert ledger.allocation_for("alice") is None
        assert ledger.audit() == []
        assert len(ledger.allocate("carol", "", 8).gpu_uuids) == 8  # every GPU is free again
    assert time.monotonic() - start < 5  # the dead process's lock went with it
    if not is_postgresql(ledger_path):
        db = sqlite3.connect(ledger_path)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_hub_killed_after_a_grant_keeps_it_until_reconcile_finds_no_container(ledger_path):
    kill_when(hub_that_dies_after_grant, ledger_path)
    with Ledger(ledger_path) as ledger:
        held = ledger.allocation_for("bob")
        assert held is not None and len(held.gpu_uuids) == 3  # committed grants survive the crash
        # the container never started: reconcile on start gives the GPUs back
        result = ledger.apply_reconcile(reconcile(ledger.allocations(), [], hub_id="labgpu"))
        assert [a.user for a in result.released] == ["bob"]
        assert ledger.allocations() == []
        assert [e.reason for e in ledger.audit()][-1] == "reconcile: no running container"


def test_connections_the_postgresql_server_dropped_fail_once_and_the_ledger_goes_on(postgres_cluster):
    """A database restart (here: every session of the ledger's database terminated) leaves dead
    connections in the hub's pools: each fails one transaction, is thrown away, and the next
    transactions run on new ones, with nothing granted twice."""
    url = postgres_cluster.new_database()
    try:
        with Ledger(url) as ledger:
            ledger.sync_inventory(ReplayInventory(DATA / "a100x8-two-nvlink-islands.json").gpus())
            ledger.allocate("alice", "", 1)
            postgres_cluster.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                f" WHERE datname = '{url.rsplit('/', 1)[1]}' AND pid <> pg_backend_pid()"
            )
            failures = 0
            for _ in range(10):
                try:
                    granted = ledger.allocate("bob", "", 2)
                    break
                except Exception:  # the dead connection's one failure (psycopg's OperationalError)
                    failures += 1
            assert failures <= 5 and len(granted.gpu_uuids) == 2  # at most the pool's dead connections
            assert [(a.user, len(a.gpu_uuids)) for a in ledger.allocations()] == [("alice", 1), ("bob", 2)]
    finally:
        postgres_cluster.drop_database(url)
