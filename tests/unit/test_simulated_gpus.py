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


# --- telemetry: busy while a marked process of the holding workspace runs -----------------------

CONTAINER_A = "a" * 64
CONTAINER_B = "b" * 64


def fake_proc(root, pid, container, environ):
    d = root / str(pid)
    d.mkdir()
    (d / "cgroup").write_text(f"12:memory:/docker/{container}\n" if container else "0::/user.slice\n")
    (d / "environ").write_bytes(b"\0".join(e.encode() for e in environ) + b"\0")


def test_a_marked_process_makes_the_gpus_of_its_workspace_busy_and_is_listed_on_them(tmp_path):
    from labgpu.gpus.simulated import SimulatedTelemetrySource
    from labgpu.services.simulated_load import MarkedProcessScanner

    gpus = simulated_gpus("4xH100")
    labels = {
        CONTAINER_A: {"org.labgpu.gpus": f"{gpus[0].uuid},{gpus[1].uuid}"},
        CONTAINER_B: {"org.labgpu.gpus": gpus[2].uuid},
    }
    fake_proc(tmp_path, 100, CONTAINER_A, ["HOME=/home/jovyan", "LABGPU_SIM_BUSY=1"])
    fake_proc(tmp_path, 101, CONTAINER_A, ["HOME=/home/jovyan"])  # unmarked: JupyterLab itself
    fake_proc(tmp_path, 200, CONTAINER_B, ["LABGPU_SIM_BUSY=0"])  # not the marker
    fake_proc(tmp_path, 300, None, ["LABGPU_SIM_BUSY=1"])  # a host process holds no GPU
    lookups = []
    scanner = MarkedProcessScanner(lambda cid: lookups.append(cid) or labels.get(cid), tmp_path)
    readings = SimulatedTelemetrySource(gpus, scanner).read()
    assert [r.utilization_gpu for r in readings] == [97, 97, 0, 0]
    assert [[p.pid for p in r.processes] for r in readings] == [[100], [100], [], []]
    assert readings[0].memory_used_mib == 1024 and readings[2].memory_used_mib == 0
    assert all(r.name.endswith("(simulated)") and r.error is None for r in readings)
    SimulatedTelemetrySource(gpus, scanner).read()
    assert sorted(set(lookups)) == [CONTAINER_A, CONTAINER_B] and len(lookups) == 2  # labels cached


# --- the container: the grant's env and labels, no device request ---------------------------------


def test_a_simulated_grant_reaches_the_container_as_env_and_labels_without_a_device_request():
    from labgpu.hub.containers import WorkspaceSpec, container_config

    uuids = tuple(g.uuid for g in simulated_gpus("2xH100"))
    create, host = container_config(
        WorkspaceSpec(
            name="labgpu-alice",
            image="labgpu/workspace:local",
            user="alice",
            server="",
            hub_id="labgpu",
            environment={},
            gpu_uuids=uuids,
            gpu_driver="simulated",
        )
    )
    assert "device_requests" not in host
    env = create["environment"]
    assert env["LABGPU_GPUS"] == ",".join(uuids) == env["NVIDIA_VISIBLE_DEVICES"]
    assert env["LABGPU_GPUS_SIMULATED"] == "1"
    assert create["labels"]["org.labgpu.gpus"] == ",".join(uuids)
    # A CPU server on a simulated hub is a plain CPU server.
    cpu, _ = container_config(
        WorkspaceSpec(
            name="labgpu-bob", image="i", user="bob", server="", hub_id="labgpu", environment={}, gpu_driver="simulated"
        )
    )
    assert cpu["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void" and "LABGPU_GPUS_SIMULATED" not in cpu["environment"]
