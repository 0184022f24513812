"""Simulated GPUs: presets become an inventory the allocator uses like real GPUs, clearly labelled."""

from __future__ import annotations

import pytest

from labgpu.gpus.allocator import choose_gpus
from labgpu.gpus.inventory import InventoryError
from labgpu.gpus.simulated import SimulatedInventory, is_simulated, simulated_gpus


def test_a_preset_gives_that_many_gpus_of_that_model_each_labelled_simulated():
    gpus = simulated_gpus("4xH100")
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert {g.model for g in gpus} == {"NVIDIA H100 80GB HBM3 (simulated)"}
    assert all(is_simulated(g) and g.memory_total == 80 * 1024**3 and g.healthy for g in gpus)
    assert len({g.uuid for g in gpus}) == 4 and all(g.uuid.startswith("GPU-") for g in gpus)


def test_uuids_are_stable_for_a_preset_so_a_restarted_demo_hub_finds_its_allocations():
    assert [g.uuid for g in simulated_gpus("2xA100-NVLink+2xL4")] == [
        g.uuid for g in SimulatedInventory("2xA100-NVLink+2xL4").gpus()
    ]
    assert simulated_gpus("2xL4")[0].uuid != simulated_gpus("2xH100")[0].uuid


def test_nvlink_terms_are_islands_and_the_allocator_packs_a_two_gpu_grant_into_one():
    gpus = simulated_gpus("2xL4+2xA100-NVLink")
    l4, a100 = gpus[:2], gpus[2:]
    assert all(not g.nvlink_peers for g in l4)
    assert a100[0].nvlink_peers == {a100[1].uuid} and a100[1].nvlink_peers == {a100[0].uuid}
    granted = choose_gpus(gpus, 2, placement="pack", models=["A100"])
    assert sorted(g.uuid for g in granted) == sorted(g.uuid for g in a100)


@pytest.mark.parametrize(
    ("preset", "why"),
    [
        ("", "it is empty"),
        ("4xV100", "unknown model 'V100'"),
        ("0xH100", "asks for no GPU"),
        ("4xH100+", "empty term"),
        ("65xL4", "more than 64 GPUs"),
        ("four H100", "is not COUNTxMODEL[-NVLink]"),
    ],
)
def test_a_bad_preset_is_refused_with_the_grammar_and_the_known_models(preset, why):
    with pytest.raises(InventoryError) as refused:
        simulated_gpus(preset)
    assert why in str(refused.value)
    assert "Write terms like 4xH100 or 2xA100-NVLink+2xL4 (models: H200, H100, A100" in str(refused.value)
