"""What NvmlInventory sees on a real GPU machine, checked against nvidia-smi.

Run it on the GPU host (no hub, no Docker needed):

    python benchmarks/gpu_inventory_check.py [--quick] [--out NAME]

Prints every GPU (UUID, model, memory, MIG, health, PCI bus, NUMA node, PCIe switch group,
NVLink peers), the cost of ``gpus()`` (first call with handles and topology, then the cached
calls), what the allocator would grant for 1..N GPUs, and a grant/release on a scratch ledger.
Writes benchmarks/results/<NAME>.json; the last line is the verdict: PASS when NVML's UUIDs,
names and memory match ``nvidia-smi`` and every GPU is healthy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from machine_info import machine_info

from labgpu.db.ledger import Ledger
from labgpu.gpus.allocator import NotEnoughGpus, choose_gpus
from labgpu.gpus.inventory import InventoryError, gpu_to_dict
from labgpu.gpus.nvml import NvmlInventory

RESULTS = REPO / "benchmarks" / "results"


def machine() -> dict:
    return machine_info()


def nvidia_smi(*args: str) -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None


def smi_gpus() -> list[dict] | None:
    """UUID, name and total memory (MiB) per GPU as nvidia-smi reports them."""
    out = nvidia_smi("--query-gpu=index,uuid,name,memory.total,pci.bus_id", "--format=csv,noheader,nounits")
    if out is None:
        return None
    rows = []
    for line in out.strip().splitlines():
        index, uuid, name, memory, bus = (part.strip() for part in line.split(","))
        rows.append({"index": int(index), "uuid": uuid, "name": name, "memory_mib": int(memory), "pci_bus_id": bus})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="what NvmlInventory sees, checked against nvidia-smi")
    parser.add_argument("--quick", action="store_true", help="fewer timing repeats")
    parser.add_argument("--out", default="gpu_inventory", help="results file name (without .json)")
    args = parser.parse_args(argv)
    report: dict = {"machine": machine()}
    inventory = NvmlInventory()
    try:
        start = time.perf_counter()
        gpus = inventory.gpus()
        first_ms = (time.perf_counter() - start) * 1000
    except InventoryError as error:
        print(error)
        print("gpu_inventory_check: gpus=0 target=>=1 FAIL")
        return 1
    repeats = 20 if args.quick else 200
    cached = []
    for _ in range(repeats):
        start = time.perf_counter()
        inventory.gpus()
        cached.append((time.perf_counter() - start) * 1000)
    report["timing_ms"] = {
        "first_call_with_init_and_topology": round(first_ms, 3),
        "cached_median": round(statistics.median(cached), 4),
        "cached_max": round(max(cached), 4),
        "repeats": repeats,
    }
    report["gpus"] = [gpu_to_dict(g) for g in gpus]
    index_of = {g.uuid: g.index for g in gpus}
    for gpu in gpus:
        peers = sorted(index_of.get(p, -1) for p in gpu.nvlink_peers)
        mig = f" MIG {len(gpu.mig_devices)} devices" if gpu.mig_enabled else ""
        health = "ok" if gpu.healthy else f"UNHEALTHY ({gpu.health_reason})"
        print(
            f"GPU {gpu.index}: {gpu.uuid} {gpu.model} {gpu.memory_total / 1024**3:.1f} GiB {health}{mig} "
            f"bus {gpu.pci_bus_id} numa {gpu.numa_node} switch {gpu.switch_group or '-'} nvlink peers {peers}"
        )
        for mig_device in gpu.mig_devices:
            print(f"    MIG {mig_device.index}: {mig_device.uuid} {mig_device.memory_total / 1024**3:.1f} GiB")
    print(f"gpus(): first call {first_ms:.1f} ms, then median {statistics.median(cached):.3f} ms ({repeats} calls)")

    smi = smi_gpus()
    report["nvidia_smi"] = smi
    report["nvidia_smi_topo"] = nvidia_smi("topo", "-m")
    mismatches = []
    if smi is None:
        mismatches.append("nvidia-smi not found: cannot cross-check")
    else:
        by_uuid = {row["uuid"]: row for row in smi}
        for gpu in gpus:
            row = by_uuid.get(gpu.uuid)
            if row is None:
                mismatches.append(f"{gpu.uuid}: not listed by nvidia-smi")
                continue
            if row["name"] != gpu.model:
                mismatches.append(f"{gpu.uuid}: name {gpu.model!r} vs nvidia-smi {row['name']!r}")
            if abs(row["memory_mib"] - gpu.memory_total / 1024**2) > 1:
                mismatches.append(
                    f"{gpu.uuid}: memory {gpu.memory_total / 1024**2:.0f} MiB vs nvidia-smi {row['memory_mib']}"
                )
        if len(by_uuid) != len(gpus):
            mismatches.append(f"nvidia-smi lists {len(by_uuid)} GPUs, NVML inventory {len(gpus)}")
    if report["nvidia_smi_topo"]:
        print(report["nvidia_smi_topo"].rstrip())

    choices = {}
    for n in range(1, len(gpus) + 1):
        for placement in ("pack", "spread"):
            try:
                chosen = choose_gpus(gpus, n, placement=placement)
                choices[f"{n}/{placement}"] = [g.index for g in chosen]
            except NotEnoughGpus as refused:
                choices[f"{n}/{placement}"] = str(refused)
    report["allocator_choices"] = choices
    print("allocator on an empty box:", ", ".join(f"{k} -> {v}" for k, v in choices.items() if k.endswith("pack")))

    with tempfile.TemporaryDirectory() as tmp, Ledger(Path(tmp) / "ledger.sqlite") as ledger:
        ledger.sync_inventory(gpus)
        healthy = [g for g in gpus if g.healthy and not g.mig_enabled]
        if healthy:
            granted = ledger.allocate("check", "", len(healthy))
            released = ledger.release("check", "", "check done")
            report["ledger_round_trip"] = {"granted": list(granted.gpu_uuids), "released": list(released.gpu_uuids)}
            if sorted(granted.gpu_uuids) != sorted(g.uuid for g in healthy):
                mismatches.append("the ledger did not grant every healthy GPU of an empty box")
    unhealthy = [g.uuid for g in gpus if not g.healthy]
    if unhealthy:
        mismatches.append(f"unhealthy GPUs: {', '.join(unhealthy)}")
    report["mismatches"] = mismatches
    for line in mismatches:
        print("MISMATCH:", line)
    inventory.close()
    status = "PASS" if gpus and not mismatches else "FAIL"
    report["status"] = status
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"gpu_inventory_check: gpus={len(gpus)} mismatches={len(mismatches)} target=0 {status}")
    return 0 if status == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
