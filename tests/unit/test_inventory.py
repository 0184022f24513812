"""GPU inventory: static config and replay files behind one interface, and the plain-data forms of a GPU
(the NVML source has its own file, test_inventory_nvml.py)."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labgpu.gpus.inventory import (
    InventoryError,
    ReplayInventory,
    StaticInventory,
    gpu_from_row,
    gpu_to_dict,
    gpu_to_row,
    inventory_source,
    mig_units,
    parse_memory,
)

DATA = Path(__file__).parent.parent / "data"


def test_replay_of_the_8_gpu_box_has_two_nvlink_islands():
    gpus = ReplayInventory(DATA / "a100x8-two-nvlink-islands.json").gpus()
    assert [g.index for g in gpus] == list(range(8))
    assert all(g.model == "NVIDIA A100-SXM4-80GB" and g.memory_total == 80 * 1024**3 for g in gpus)
    by_uuid = {g.uuid: g for g in gpus}
    assert {by_uuid[p].index for p in gpus[0].nvlink_peers} == {1, 2, 3}
    assert {by_uuid[p].index for p in gpus[5].nvlink_peers} == {4, 6, 7}


def test_replay_snapshots_play_in_order_and_the_last_one_repeats():
    source = ReplayInventory(DATA / "a100x8-gpu3-lost.json")
    first, second, third, fourth = (source.gpus() for _ in range(4))
    assert all(g.healthy for g in first)
    assert [g.index for g in second if not g.healthy] == [3]
    assert second[3].health_reason == "NVML: GPU is lost"
    assert all(g.healthy for g in third) and third == fourth


def test_single_h100():
    (gpu,) = inventory_source(f"replay:{DATA / 'h100x1.json'}").gpus()
    assert gpu.short_uuid == "GPU-3f2a…" and gpu.model == "NVIDIA H100 80GB HBM3" and not gpu.nvlink_peers


def test_static_yaml_with_sizes_groups_and_defaults(tmp_path):
    path = tmp_path / "gpus.yaml"
    path.write_text(
        "gpus:\n"
        "  - {uuid: GPU-aaaa, model: NVIDIA L40S, memory: 48G, nvlink_group: x}\n"
        "  - {uuid: GPU-bbbb, model: NVIDIA L40S, memory: 49152MiB, nvlink_group: x, numa_node: 1}\n"
        "  - {uuid: GPU-cccc, model: NVIDIA L40S, memory: 48G, healthy: false}\n"
    )
    a, b, c = inventory_source(f"static:{path}").gpus()
    assert (a.index, b.index, c.index) == (0, 1, 2)
    assert a.memory_total == b.memory_total == 48 * 1024**3
    assert a.nvlink_peers == {"GPU-bbbb"} and b.nvlink_peers == {"GPU-aaaa"} and not c.nvlink_peers
    assert b.numa_node == 1 and not c.healthy and c.health_reason == "marked unhealthy"


def test_static_from_config_dicts_makes_nvlink_symmetric():
    source = StaticInventory(
        [{"uuid": "GPU-a", "memory": "1G", "nvlink_peers": ["GPU-b"]}, {"uuid": "GPU-b", "memory": "1G"}]
    )
    a, b = source.gpus()
    assert a.nvlink_peers == {"GPU-b"} and b.nvlink_peers == {"GPU-a"}


@pytest.mark.parametrize(
    "text, where, what",
    [
        ("gpus:\n  - {model: A100}\n", ":2:5:", "gpus[0].uuid must be the GPU's UUID"),
        ("gpus:\n  - uuid: GPU-a\n    memory: lots\n", ":3:5:", "gpus[0].memory must be a size like 80G"),
        ("gpus:\n  - uuid: GPU-a\n    colour: green\n", ":3:5:", "gpus[0].colour is not a GPU field; allowed:"),
        ("gpus:\n  - {uuid: GPU-a}\n  - {uuid: GPU-a}\n", ":3:6:", "gpus[1].uuid GPU-a is already listed at gpus[0]"),
        ("gpus:\n  - {uuid: GPU-a, index: -1}\n", ":2:19:", "gpus[0].index must be an integer >= 0"),
        ("gpus: [\n", ":2:1:", "not valid YAML/JSON"),
    ],
)
def test_static_file_errors_say_file_line_column_field_and_what_is_allowed(tmp_path, text, where, what):
    path = tmp_path / "gpus.yaml"
    path.write_text(text)
    with pytest.raises(InventoryError) as error:
        StaticInventory.from_file(path)
    message = str(error.value)
    assert message.startswith(str(path) + where), message
    assert what in message


def test_unknown_source_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(InventoryError, match="is not one of: nvml, static:FILE, replay:FILE, simulated:PRESET"):
        inventory_source("docker")
    with pytest.raises(InventoryError, match="cannot read the GPU inventory file"):
        inventory_source(f"static:{tmp_path / 'nope.yaml'}")


def test_replay_round_trips_what_gpu_to_dict_writes(tmp_path):
    original = ReplayInventory(DATA / "a100x8-two-nvlink-islands.json").gpus()
    path = tmp_path / "copy.json"
    path.write_text(json.dumps({"gpus": [gpu_to_dict(g) for g in original]}))
    assert ReplayInventory(path).gpus() == original


def test_every_gpu_and_mig_slice_survives_a_table_row_and_its_extra_columns():
    gpus = ReplayInventory(DATA / "a100x8-two-nvlink-islands.json").gpus()
    gpus += ReplayInventory(DATA / "h100x2-one-mig.json").gpus()
    units = [unit for gpu in gpus for unit in (gpu, *mig_units(gpu))]
    assert any(u.mig_parent for u in units) and any(u.nvlink_peers for u in units)
    for unit in units:
        row = gpu_to_row(unit)
        assert all(isinstance(v, (str, int, bool, type(None))) for v in row.values())
        assert gpu_from_row({**row, "present": True, "holder": "alice"}) == unit


def test_a_row_with_null_text_reads_as_empty_text():
    row = {**gpu_to_row(StaticInventory([{"uuid": "GPU-a", "memory": "1G"}]).gpus()[0]), "switch_group": None}
    assert gpu_from_row(row).switch_group == ""


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**44), st.sampled_from(["", "B", "K", "M", "G", "T", "KiB", "MiB", "GiB", "Gb", "m", "g"]))
def test_memory_sizes_parse_to_bytes(number, unit):
    factor = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[
        unit[:1].upper() if unit not in ("", "B") else unit
    ]
    assert parse_memory(f"{number}{unit}") == number * factor


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=12))
def test_memory_parser_never_crashes_on_what_admins_type(text):
    try:
        assert parse_memory(text) >= 0
    except ValueError as error:
        assert "memory must be" in str(error)
