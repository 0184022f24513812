"""MIG: a GPU in MIG mode is handed out as slices, only to requests that name MIG (pure)."""

from dataclasses import replace
from pathlib import Path

import pytest

from labgpu.gpus.allocator import GrantRule, HeldUnits, NotEnoughGpus, choose_gpus
from labgpu.gpus.inventory import ReplayInventory, mig_units

DATA = Path(__file__).parent.parent / "data"
SLICE = ["MIG 1g.10gb"]


@pytest.fixture(scope="module")
def units():
    """GPU 0 in MIG mode (seven 1g.10gb slices) and GPU 1 whole, as allocatable units."""
    gpus = ReplayInventory(DATA / "h100x2-one-mig.json").gpus()
    return [unit for gpu in gpus for unit in (gpu, *mig_units(gpu))]


def test_slices_carry_their_gpu_and_cdi_style_label(units):
    slices = [u for u in units if u.mig_parent]
    assert len(slices) == 7 and {s.mig_parent for s in slices} == {units[0].uuid}
    assert [s.label for s in slices] == [f"0:{i}" for i in range(7)]
    assert all(s.model == "NVIDIA H100 80GB HBM3 MIG 1g.10gb" and not s.nvlink_peers for s in slices)


def test_asking_for_a_gpu_gets_a_whole_gpu_never_a_slice_or_the_mig_gpu(units):
    (granted,) = choose_gpus(units, 1)
    assert granted.label == "1"
    with pytest.raises(NotEnoughGpus, match="you asked for 2, 1 is free"):
        choose_gpus(units, 2)


def test_asking_for_a_mig_model_gets_one_slice(units):
    (granted,) = choose_gpus(units, 1, models=SLICE)
    assert granted.mig_parent == units[0].uuid and granted.label == "0:0"


def test_slices_are_granted_one_per_server(units):
    with pytest.raises(NotEnoughGpus, match="you asked for 2, 0 are free"):
        choose_gpus(units, 2, models=SLICE)


def test_pack_fills_the_partly_used_mig_gpu_and_spread_the_emptiest(units):
    second = [replace(u, uuid=u.uuid + "-b", index=2, mig_parent=u.mig_parent + "-b") for u in units if u.mig_parent]
    free = [u for u in units if u.mig_parent and u.mig_index >= 4] + second  # GPU 0 has 3 slices left, GPU 2 has 7
    assert choose_gpus(free, 1, models=SLICE, placement="pack")[0].index == 0
    assert choose_gpus(free, 1, models=SLICE, placement="spread")[0].index == 2


def test_slices_of_an_unhealthy_gpu_are_not_granted(units):
    sick_parent = replace(
        ReplayInventory(DATA / "h100x2-one-mig.json").gpus()[0], healthy=False, health_reason="NVML: GPU is lost"
    )
    with pytest.raises(NotEnoughGpus, match="7 unhealthy"):
        choose_gpus(mig_units(sick_parent), 1, models=SLICE)


def test_excluding_a_mig_gpu_excludes_its_slices_and_a_gone_unit_never_qualifies(units):
    mig_gpu, slices = units[0], [u for u in units if u.mig_parent]
    assert all(GrantRule(1, SLICE).qualifies(s) for s in slices)
    assert not any(GrantRule(1, SLICE, exclude={mig_gpu.uuid}).qualifies(s) for s in slices)
    assert not GrantRule(1, SLICE).qualifies(slices[0], present=False)


def test_a_gpu_and_its_slices_exclude_each_other_while_held(units):
    whole, slices = units[-1], [u for u in units if u.mig_parent]
    one_slice_held = HeldUnits.of([slices[0]])
    assert not one_slice_held.free(slices[0]) and one_slice_held.free(slices[1]) and one_slice_held.free(whole)
    assert not one_slice_held.free(units[0])  # the MIG GPU itself, should MIG mode be switched off
    held_whole = HeldUnits.of([replace(units[0], mig_enabled=False)])
    assert not any(held_whole.free(s) for s in slices)
