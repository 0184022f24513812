"""Fixtures shared by the unit tests of the hub's spawner."""

from __future__ import annotations

from pathlib import Path

import pytest

from labgpu.gpus.inventory import ReplayInventory
from labgpu.hub import gpu_queue
from labgpu.hub import resources as hub_resources

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def ledger_url(tmp_path):
    """A ledger of 8 A100s, shared by the hub's spawners as in the hub process."""
    url = str(tmp_path / "ledger.sqlite")
    ledger = hub_resources.ledger(url)
    ledger.sync_inventory(ReplayInventory(DATA / "a100x8-two-nvlink-islands.json").gpus())
    yield url
    gpu_queue._queues.pop(ledger.url, None)
    hub_resources._session_stores.pop(url, None)
    hub_resources._ledgers.pop(url, None)
    ledger.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_db(request, tmp_path):
    """Where a store test keeps its database, once per backend: an SQLite file, or a database of
    its own in the test run's throwaway PostgreSQL cluster (already at Alembic's head)."""
    if request.param == "sqlite":
        yield str(tmp_path / "ledger.sqlite")
        return
    cluster = request.getfixturevalue("postgres_cluster")
    url = cluster.new_database()
    yield url
    cluster.drop_database(url)


@pytest.fixture
def second_ledger_db(request, tmp_path, ledger_db):
    """Another database on ``ledger_db``'s backend, for a test that compares two."""
    if "://" not in ledger_db:
        yield str(tmp_path / "second.sqlite")
        return
    cluster = request.getfixturevalue("postgres_cluster")
    url = cluster.new_database()
    yield url
    cluster.drop_database(url)
