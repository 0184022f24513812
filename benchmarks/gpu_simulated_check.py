"""Simulated GPUs held against the real thing on a GPU machine (issue 13).

    python benchmarks/gpu_simulated_check.py [--out NAME]

On the GPU host (no hub, no Docker needed): the simulated preset for this card's model must
name the same model with the same memory (within 2%) as NVML; the simulated telemetry source
must give readings with the same fields as the real NVML source; and under the same load (a
bf16 matmul loop started with LABGPU_SIM_BUSY=1, so it is both a real GPU process and a
"marked" one) both sources must read the GPU busy and list the load's PID, which the poller's
attribution maps to the same owner. Writes benchmarks/results/<NAME>.json; the last line is
the verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from machine_info import machine_info

from labgpu.gpus.nvml import NvmlInventory
from labgpu.gpus.sampling import NvmlTelemetrySource
from labgpu.gpus.simulated import BUSY_ENV, MODELS, SimulatedTelemetrySource, simulated_gpus
from labgpu.services.attribution import ProcessAttributor

RESULTS = REPO / "benchmarks" / "results"
LOAD = """
import torch, time
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
print("ready", flush=True)
end = time.time() + 60
while time.time() < end:
    for _ in range(20):
        torch.matmul(a, b)
    torch.cuda.synchronize()
"""


def marked_pids(proc_root: str = "/proc") -> list[int]:
    """PIDs whose environment carries the simulator's busy marker (what the hub's scanner reads)."""
    found = []
    for entry in os.scandir(proc_root):
        if entry.name.isdigit():
            try:
                environ = Path(proc_root, entry.name, "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"{BUSY_ENV}=1".encode() in environ:
                found.append(int(entry.name))
    return found


def populated(reading) -> list[str]:
    return sorted(k for k, v in asdict(reading).items() if v not in (None, (), []))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_simulated_check")
    args = parser.parse_args()
    real = NvmlInventory().gpus()[0]
    key = next((k for k in sorted(MODELS, key=len, reverse=True) if k.replace("-40G", "") in real.model), None)
    result: dict = {"machine": machine_info(), "real_model": real.model, "real_memory_bytes": real.memory_total}
    checks: dict[str, bool] = {}
    if key is None:
        result["error"] = f"no simulated model for {real.model!r}"
        checks["model_known"] = False
        sim = None
    else:
        sim = simulated_gpus(f"1x{key}")[0]
        result.update(
            preset=f"1x{key}",
            simulated_model=sim.model,
            simulated_memory_bytes=sim.memory_total,
            memory_ratio=round(sim.memory_total / real.memory_total, 4),
        )
        checks["same_model"] = sim.model.removesuffix(" (simulated)") == real.model
        checks["memory_within_2pct"] = abs(sim.memory_total / real.memory_total - 1) <= 0.02

    nvml = NvmlTelemetrySource()
    load = subprocess.Popen(
        [sys.executable, "-c", LOAD], env={**os.environ, BUSY_ENV: "1"}, stdout=subprocess.PIPE, text=True
    )
    try:
        assert load.stdout is not None and load.stdout.readline().strip() == "ready"
        time.sleep(3)
        attributor = ProcessAttributor(None)
        real_samples, sim_samples, real_cost, sim_cost = [], [], [], []
        simulated = SimulatedTelemetrySource([sim], lambda: {sim.uuid: marked_pids()}) if sim else None
        for _ in range(10):
            t0 = time.perf_counter()
            (r,) = [x for x in nvml.read() if x.uuid == real.uuid]
            real_cost.append((time.perf_counter() - t0) * 1e3)
            real_samples.append(r)
            if simulated:
                t0 = time.perf_counter()
                (s,) = simulated.read()
                sim_cost.append((time.perf_counter() - t0) * 1e3)
                sim_samples.append(s)
            time.sleep(1)
    finally:
        load.terminate()
        load.wait(30)
    r, s = real_samples[-1], (sim_samples[-1] if sim_samples else None)
    result["real_util_median"] = statistics.median(x.utilization_gpu or 0 for x in real_samples)
    result["real_pids"] = sorted({p.pid for x in real_samples for p in x.processes})
    result["load_pid"] = load.pid
    result["real_read_ms_median"] = round(statistics.median(real_cost), 3)
    result["real_fields"] = populated(r)
    checks["real_busy"] = result["real_util_median"] >= 90
    checks["real_lists_load"] = load.pid in result["real_pids"]
    if s is not None:
        result["simulated_util_median"] = statistics.median(x.utilization_gpu or 0 for x in sim_samples)
        result["simulated_pids"] = sorted({p.pid for x in sim_samples for p in x.processes})
        result["simulated_read_ms_median"] = round(statistics.median(sim_cost), 3)
        result["simulated_fields"] = populated(s)
        checks["simulated_busy"] = result["simulated_util_median"] >= 90
        checks["simulated_lists_load"] = load.pid in result["simulated_pids"]
        missing = sorted(set(result["real_fields"]) - set(result["simulated_fields"]))
        result["fields_real_has_simulated_lacks"] = missing
        checks["same_fields"] = not missing
        owners = {str(attributor.owner_of(load.pid))}
        result["owner_of_load"] = sorted(owners)
    nvml.close()
    result["checks"] = checks
    passed = all(checks.values())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    verdict = "PASS" if passed else "FAIL " + ",".join(k for k, v in checks.items() if not v)
    print(f"gpu_simulated_check: checks={sum(checks.values())}/{len(checks)} {verdict}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
