"""Multi-GPU check of one host (issue 22): topology, placement, NCCL and the poller on every
GPU it finds, saying plainly which parts need more GPUs than the machine has.

1. NVML inventory (UUIDs, models, memory, NVLink peers, PCIe switch groups, NUMA nodes) held
   against ``nvidia-smi`` and ``nvidia-smi topo -m``.
2. The allocator's pack and spread grants for 2, 4 and 8 GPUs on that topology, each with its
   interconnect level (the worst pair: NVLink, PIX, PXB, PHB, NODE, SYS), and the all-reduce
   bus bandwidth (labgpu.doctor's NCCL worker through torchrun) on the pack grant vs on the
   worst set of the same size, where the topology has one.
3. labgpu-doctor's NCCL check on 2, 4 and 8 GPUs: bus bandwidth, PASS/WARN as the doctor
   judges it against the link it detects.
4. The real poller (NVML, SQLite) on all GPUs with a PyTorch load on every other GPU:
   each load attributed to its GPU only, and the CPU cost per GPU per tick.

    python3 benchmarks/gpu_multi_check.py [--out DIR]     # on the GPU machine

Writes DIR/gpu_multi_<N>x<model>.json and .txt; the last line is
`gpu_multi_check: gpus=N ran=... not_run=... PASS|FAIL`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_inventory_check import nvidia_smi, smi_gpus
from machine_info import machine_info

from labgpu.db.telemetry_store import GPU, OWNER, PROCESS_SAMPLE, TelemetryDB
from labgpu.gpus.allocator import NotEnoughGpus, choose_gpus
from labgpu.gpus.inventory import Gpu, gpu_to_dict
from labgpu.gpus.nvml import NvmlInventory
from labgpu.gpus.sampling import NvmlTelemetrySource
from labgpu.gpus.telemetry import Retention
from labgpu.services.attribution import ProcessAttributor
from labgpu.services.poller import Poller

SIZES = (2, 4, 8)
# nvidia-smi topo's words, best first; NVML's common-ancestor levels map onto them.
LEVELS = ("NVLINK", "PIX", "PXB", "PHB", "NODE", "SYS")
LOAD_CODE = r"""
import os, sys, time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn_like(a)
(a @ b).sum().item(); torch.cuda.synchronize()
print("ready", os.getpid(), flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for _ in range(10):
        c = a @ b
    torch.cuda.synchronize()
"""


def nvml_pair_level(a: Gpu, b: Gpu, handles: dict[str, Any]) -> str:
    """How two GPUs reach each other: NVLINK when peers, else the PCIe/CPU level NVML reports."""
    if b.uuid in a.nvlink_peers:
        return "NVLINK"
    import pynvml

    try:
        level = pynvml.nvmlDeviceGetTopologyCommonAncestor(handles[a.uuid], handles[b.uuid])
    except pynvml.NVMLError:
        return "SYS"
    names = {
        pynvml.NVML_TOPOLOGY_INTERNAL: "PIX",
        pynvml.NVML_TOPOLOGY_SINGLE: "PIX",
        pynvml.NVML_TOPOLOGY_MULTIPLE: "PXB",
        pynvml.NVML_TOPOLOGY_HOSTBRIDGE: "PHB",
        pynvml.NVML_TOPOLOGY_NODE: "NODE",
        pynvml.NVML_TOPOLOGY_SYSTEM: "SYS",
    }
    return names.get(level, "SYS")


def set_level(gpus: list[Gpu], levels: dict[tuple[str, str], str]) -> str:
    """A set's interconnect level: its worst pair."""
    pairs = [levels[(a.uuid, b.uuid)] for a, b in itertools.combinations(gpus, 2)]
    return max(pairs, key=LEVELS.index) if pairs else "-"


def worst_set(gpus: list[Gpu], size: int, levels: dict[tuple[str, str], str]) -> list[Gpu]:
    """The set of ``size`` GPUs with the worst level (most pairs at it), a deliberately bad grant."""
    candidates = itertools.islice(itertools.combinations(gpus, size), 5000)

    def badness(combo: tuple[Gpu, ...]) -> tuple[int, int]:
        pairs = [LEVELS.index(levels[(a.uuid, b.uuid)]) for a, b in itertools.combinations(combo, 2)]
        return max(pairs), sum(pairs)

    return list(max(candidates, key=badness))


def nccl_busbw(uuids: list[str], timeout_s: float = 240) -> dict[str, Any]:
    """labgpu.doctor's NCCL worker on exactly these GPUs: bus bandwidth at the largest size."""
    from labgpu.doctor.measure import nccl_launch_command

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "nccl.json"
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(uuids), OMP_NUM_THREADS="1", NCCL_NVLS_ENABLE="0")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        command = nccl_launch_command(sys.executable, len(uuids), str(out), [16, 256], 20)
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:g} s"}
        if done.returncode != 0 or not out.exists():
            return {"error": f"exit {done.returncode}: {(done.stdout + done.stderr).strip()[-400:]}"}
        report = json.loads(out.read_text())
    largest = max(report["sizes"], key=lambda s: s["bytes"])
    return {"busbw_gbps": largest["busbw_gbps"], "bytes": largest["bytes"], "correct": report["allreduce_correct"]}


def doctor_nccl(uuids: list[str], timeout_s: float = 300) -> dict[str, Any]:
    """labgpu-doctor --quick --json with only these GPUs visible: its nccl check's verdict."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(uuids), NCCL_NVLS_ENABLE="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "labgpu.doctor", "--quick", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        checks = json.loads(done.stdout)["checks"]
    except (subprocess.TimeoutExpired, ValueError, KeyError) as error:
        return {"status": "ERROR", "detail": str(error)}
    nccl = next((c for c in checks if c.get("name") == "nccl"), None)
    return {"status": nccl.get("status"), "detail": nccl.get("detail")} if nccl else {"status": "missing"}


def poller_on_all(gpus: list[Gpu], seconds: float, burst: int) -> dict[str, Any]:
    """The real poller on every GPU with a load on every other one (0, 2, ...): per-GPU
    attribution and CPU cost per GPU per tick (back-to-back ticks while the loads run)."""
    work = Path(tempfile.mkdtemp(prefix="labgpu-multi-"))
    proc_root = work / "proc"
    labels: dict[str, dict[str, str]] = {}
    loads = {}
    for gpu in gpus[::2]:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu.uuid)
        process = subprocess.Popen(
            [sys.executable, "-c", LOAD_CODE, str(seconds + 120)], env=env, stdout=subprocess.PIPE, text=True
        )
        loads[gpu.uuid] = process
    pids = {}
    for uuid, process in loads.items():
        assert process.stdout is not None
        pid = int(process.stdout.readline().split()[1])
        container = f"{len(pids):02d}" * 32
        labels[container] = {"org.labgpu.user": f"user{len(pids)}", "org.labgpu.server": ""}
        (proc_root / str(pid)).mkdir(parents=True)
        (proc_root / str(pid) / "cgroup").write_text(f"0::/system.slice/docker-{container}.scope\n")
        pids[uuid] = (pid, f"user{len(pids)}")
    db = TelemetryDB(f"sqlite:///{work / 'ledger.sqlite'}")
    poller = Poller(NvmlTelemetrySource(), db, ProcessAttributor(labels.get, proc_root), 1.0, Retention())
    end = time.time() + seconds
    while time.time() < end:
        poller.tick(time.time())
        time.sleep(1.0)
    reports = [poller.tick(time.time()) for _ in range(burst)]
    for process in loads.values():
        process.terminate()
        process.wait(timeout=60)
    with db.reader.connect() as conn:
        rows = (
            conn.execute(
                PROCESS_SAMPLE.join(GPU, GPU.c.id == PROCESS_SAMPLE.c.gpu_id)
                .join(OWNER, OWNER.c.id == PROCESS_SAMPLE.c.owner_id)
                .select()
            )
            .mappings()
            .all()
        )
    per_gpu = {}
    problems = []
    for gpu in gpus:
        seen = {(r["pid"], r["user"]) for r in rows if r["uuid"] == gpu.uuid}
        expected = {pids[gpu.uuid]} if gpu.uuid in pids else set()
        per_gpu[gpu.index] = sorted(seen)
        if seen != expected:
            problems.append(f"GPU {gpu.index}: recorded {sorted(seen)}, expected {sorted(expected)}")
    total = [r.total_cpu_s * 1000 / r.gpus for r in reports]
    nvml = [r.source_cpu_s * 1000 / r.gpus for r in reports]
    return {
        "gpus": len(gpus),
        "loaded_gpus": [g.index for g in gpus[::2]],
        "processes_per_gpu": per_gpu,
        "attribution_problems": problems,
        "total_ms_per_gpu_per_tick": statistics.median(total),
        "nvml_ms_per_gpu_per_tick": statistics.median(nvml),
        "ticks": burst,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--poller-seconds", type=float, default=8.0)
    parser.add_argument("--burst-ticks", type=int, default=200)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": machine_info(gpus=nvidia_smi("-L"))}
    ran, not_run, failures = [], [], []
    inventory = NvmlInventory()
    gpus = inventory.gpus()
    count = len(gpus)
    tag = f"{count}x" + "".join(c for c in gpus[0].model.replace("NVIDIA", "").split()[0].lower() if c.isalnum())

    # 1. inventory vs nvidia-smi ------------------------------------------------------------------
    import pynvml

    handles = {g.uuid: pynvml.nvmlDeviceGetHandleByIndex(g.index) for g in gpus}
    report["inventory"] = [gpu_to_dict(g) for g in gpus]
    report["nvidia_smi"] = smi = smi_gpus()
    report["nvidia_smi_topo"] = topo = nvidia_smi("topo", "-m")
    by_uuid = {row["uuid"]: row for row in smi or []}
    for g in gpus:
        row = by_uuid.get(g.uuid)
        if row is None or row["name"] != g.model or abs(row["memory_mib"] - g.memory_total / 2**20) > 1:
            failures.append(f"inventory: GPU {g.index} {g.uuid} differs from nvidia-smi ({row})")
    levels = {}
    for a, b in itertools.permutations(gpus, 2):
        levels[(a.uuid, b.uuid)] = nvml_pair_level(a, b, handles)
    pairs = itertools.combinations(gpus, 2)
    report["pair_levels"] = {f"{a.index}-{b.index}": levels[(a.uuid, b.uuid)] for a, b in pairs}
    ran.append("inventory")
    print(topo or "nvidia-smi topo -m: unavailable", flush=True)
    for g in gpus:
        print(
            f"GPU {g.index}: {g.uuid} {g.model} {g.memory_total / 2**30:.0f} GiB numa {g.numa_node} "
            f"switch {g.switch_group or '-'} nvlink peers {sorted(p[:12] for p in g.nvlink_peers)}",
            flush=True,
        )

    # 2 and 3. grants, NCCL on granted vs bad sets, the doctor's verdicts ----------------------------
    report["grants"], report["doctor_nccl"] = {}, {}
    for size in SIZES:
        if size > count:
            not_run.append(f"grants, NCCL and doctor on {size} GPUs (this machine has {count})")
            continue
        entry: dict[str, Any] = {}
        for placement in ("pack", "spread"):
            try:
                chosen = choose_gpus(gpus, size, placement=placement)
                entry[placement] = {"gpus": [g.index for g in chosen], "level": set_level(list(chosen), levels)}
            except NotEnoughGpus as refused:
                entry[placement] = {"refused": str(refused)}
        if "gpus" in entry["pack"]:
            granted = [g for g in gpus if g.index in entry["pack"]["gpus"]]
            bad = worst_set(gpus, size, levels)
            entry["bad_set"] = {"gpus": [g.index for g in bad], "level": set_level(bad, levels)}
            entry["nccl_granted"] = nccl_busbw([g.uuid for g in granted])
            if entry["bad_set"]["level"] != entry["pack"]["level"]:
                entry["nccl_bad_set"] = nccl_busbw([g.uuid for g in bad])
            else:
                entry["nccl_bad_set"] = {"skipped": "every set of this size has the same interconnect level"}
            for key in ("nccl_granted", "nccl_bad_set"):
                if "error" in entry[key] or entry[key].get("correct") is False:
                    failures.append(f"NCCL on {size} GPUs ({key}): {entry[key]}")
            report["doctor_nccl"][size] = verdict = doctor_nccl([g.uuid for g in granted])
            if verdict["status"] not in ("PASS", "WARN"):
                failures.append(f"doctor NCCL on {size} GPUs: {verdict}")
        report["grants"][size] = entry
        ran.append(f"grants+NCCL+doctor on {size}")
        print(f"{size} GPUs: {json.dumps(entry)} doctor {report['doctor_nccl'].get(size)}", flush=True)

    # 4. the poller on all GPUs with loads on some ---------------------------------------------------
    report["poller"] = poller = poller_on_all(gpus, args.poller_seconds, args.burst_ticks)
    failures.extend(poller["attribution_problems"])
    ran.append(f"poller on {count} GPU(s), loads on {poller['loaded_gpus']}")
    if count < 8:
        not_run.append(f"the poller's cost at 8 real GPUs (measured at {count})")
    print(f"poller: {json.dumps(poller)}", flush=True)
    inventory.close()

    report.update(ran=ran, not_run=not_run, failures=failures, pass_=not failures)
    (out / f"gpu_multi_{tag}.json").write_text(json.dumps(report, indent=1, default=str))
    lines = [f"ran: {r}" for r in ran] + [f"NOT RUN: {n}" for n in not_run] + [f"FAIL: {f}" for f in failures]
    (out / f"gpu_multi_{tag}.txt").write_text("\n".join([topo or "", *lines]) + "\n")
    print("\n".join(lines))
    print(
        f"gpu_multi_check: gpus={count} ran={len(ran)} not_run={len(not_run)} "
        f"poller_total_ms_per_gpu_per_tick={poller['total_ms_per_gpu_per_tick']:.4f} "
        f"{'PASS' if not failures else 'FAIL'}"
    )
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
