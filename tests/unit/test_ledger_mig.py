"""MIG slices in the ledger: recorded, granted alone, and never at the same time as their GPU."""

from dataclasses import replace
from pathlib import Path

import pytest

from labgpu.db.ledger import Ledger
from labgpu.gpus.allocator import NotEnoughGpus
from labgpu.gpus.inventory import ReplayInventory

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture
def gpus():
    return ReplayInventory(DATA / "h100x2-one-mig.json").gpus()


@pytest.fixture
def ledger(ledger_db, gpus):
    with Ledger(ledger_db) as ledger:
        ledger.sync_inventory(gpus)
        yield ledger


def test_slices_are_recorded_and_granted_to_mig_requests_only(ledger, gpus):
    assert [h.gpu.label for h in ledger.holdings()] == ["0", "0:0", "0:1", "0:2", "0:3", "0:4", "0:5", "0:6", "1"]
    whole = ledger.allocate("alice", "", 1)
    assert whole.gpu_uuids == (gpus[1].uuid,)
    with pytest.raises(NotEnoughGpus, match="you asked for 1, 0 are free"):
        ledger.allocate("bob", "", 1)  # the MIG GPU is not given out whole
    granted = [ledger.allocate(f"student{i}", "", 1, models=["MIG 1g.10gb"]) for i in range(7)]
    assert len({a.gpu_uuids for a in granted}) == 7 and all(a.gpu_uuids[0].startswith("MIG-") for a in granted)
    with pytest.raises(NotEnoughGpus, match=r"Not enough free MIG 1g\.10gb GPUs: you asked for 1, 0 are free"):
        ledger.allocate("student7", "", 1, models=["MIG 1g.10gb"])


def test_gpu_taken_out_of_mig_mode_is_not_granted_while_a_slice_is_held(ledger, gpus):
    ledger.allocate("student", "", 1, models=["MIG 1g.10gb"])
    change = ledger.sync_inventory([replace(gpus[0], mig_enabled=False, mig_devices=()), gpus[1]])
    assert len(change.gone) == 7  # the slices are no longer listed
    assert ledger.allocate("alice", "", 1).gpu_uuids == (gpus[1].uuid,)
    with pytest.raises(NotEnoughGpus):
        ledger.allocate("bob", "", 1)  # GPU 0 is whole again, but a slice of it is still in use
    ledger.release("student", "", "stopped")
    assert ledger.allocate("bob", "", 1).gpu_uuids == (gpus[0].uuid,)


def test_gpu_held_whole_then_put_in_mig_mode_offers_no_slices(ledger, gpus):
    ledger.sync_inventory([replace(gpus[0], mig_enabled=False, mig_devices=()), gpus[1]])
    ledger.allocate("alice", "", 2)
    ledger.sync_inventory(gpus)  # an admin switched MIG on under alice (the driver would refuse; be safe)
    with pytest.raises(NotEnoughGpus):
        ledger.allocate("student", "", 1, models=["MIG 1g.10gb"])
