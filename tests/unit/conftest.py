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
