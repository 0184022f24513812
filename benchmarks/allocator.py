"""Allocation and release latency on the real SQLite ledger (WAL, BEGIN IMMEDIATE, fresh file).

Boxes of 8 and 64 GPUs, 500 users asking for 1, 2 or 4 GPUs and stopping at random, so the
ledger runs near full (many refusals) like a busy lab. Every operation is one real
transaction through ``labgpu.db.ledger.Ledger``; latency is wall time around the call.
Writes benchmarks/results/allocator.json; the last line is the verdict: the worst (over 8/64
GPUs, allocate/release) median-over-rounds of the per-round p99 must be under 5 ms.

    python benchmarks/allocator.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from machine_info import machine_info

from labgpu.db.ledger import Ledger
from labgpu.gpus.allocator import NotEnoughGpus
from labgpu.gpus.inventory import Gpu

RESULTS = REPO / "benchmarks" / "results"
TARGET_P99_MS = 5.0
USERS = 500


def machine() -> dict:
    return machine_info()


def box(gpu_count: int) -> list[Gpu]:
    """Hosts of 8 GPUs each: two NVLink islands of 4, two GPUs per PCIe switch, NUMA per island."""
    uuids = [f"GPU-{i:08x}-0000-4000-8000-{i:012x}" for i in range(gpu_count)]
    return [
        Gpu(
            uuid=uuids[i],
            index=i,
            model="NVIDIA A100-SXM4-80GB",
            memory_total=80 * 1024**3,
            numa_node=(i // 4) % 2,
            switch_group=f"sw{i // 2}",
            nvlink_peers=frozenset(uuids[j] for j in range(i // 4 * 4, i // 4 * 4 + 4) if j != i),
        )
        for i in range(gpu_count)
    ]


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(samples: list[float]) -> dict:
    if not samples:
        return {"count": 0}
    return {
        "count": len(samples),
        "p50_ms": round(percentile(samples, 50), 4),
        "p90_ms": round(percentile(samples, 90), 4),
        "p99_ms": round(percentile(samples, 99), 4),
        "max_ms": round(max(samples), 4),
        "mean_ms": round(statistics.fmean(samples), 4),
    }


def involuntary_switches() -> int:
    """Times the OS took the CPU away from this thread (another process wanted the core)."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw


def run_round(gpu_count: int, operations: int, seed: int) -> dict[str, list[float]]:
    rng = random.Random(seed)
    timings: dict[str, list[float]] = {"allocate": [], "refuse": [], "release": [], "unpreempted": []}

    def record(kind: str, start: float, switches: int) -> None:
        elapsed = (time.perf_counter() - start) * 1000
        timings[kind].append(elapsed)
        if kind != "refuse" and involuntary_switches() == switches:
            timings["unpreempted"].append(elapsed)

    with tempfile.TemporaryDirectory() as tmp, Ledger(Path(tmp) / "ledger.sqlite") as ledger:
        ledger.sync_inventory(box(gpu_count))
        holding: list[str] = []
        idle = [f"user{u:03d}" for u in range(USERS)]
        for _ in range(operations):
            if holding and rng.random() < 0.5:
                user = holding.pop(rng.randrange(len(holding)))
                switches, start = involuntary_switches(), time.perf_counter()
                ledger.release(user, "", "stopped")
                record("release", start, switches)
                idle.append(user)
                continue
            user = idle.pop(rng.randrange(len(idle)))
            n = rng.choice([1, 1, 1, 2, 2, 4])
            placement = rng.choice(["pack", "spread"])
            switches, start = involuntary_switches(), time.perf_counter()
            try:
                ledger.allocate(user, "", n, placement=placement, image="sha256:" + "0" * 64)
            except NotEnoughGpus:
                record("refuse", start, switches)
                idle.append(user)
                continue
            record("allocate", start, switches)
            holding.append(user)
        events = len(ledger.audit())
    timings["audit_rows"] = [events]
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations (under a minute)")
    args = parser.parse_args(argv)
    rounds, operations = (3, 600) if args.quick else (5, 3000)
    report: dict = {
        "machine": machine(),
        "target_p99_ms": TARGET_P99_MS,
        "users": USERS,
        "rounds": rounds,
        "operations_per_round": operations,
        "quick": args.quick,
        "sqlite": "WAL, synchronous=NORMAL, BEGIN IMMEDIATE, busy_timeout 30 s, one file per round",
        "load_average_before": os.getloadavg(),
        "configs": {},
        "note": "unpreempted = allocate+release calls during which the OS did not switch this "
        "thread out for another process (getrusage ru_nivcsw). Verdict: the worst, over "
        "8/64 GPUs and allocate/release, of the median over rounds of each round's p99 "
        "(all calls, preempted ones included)",
    }
    worst = 0.0
    for gpu_count in (8, 64):
        merged: dict[str, list[float]] = {"allocate": [], "refuse": [], "release": [], "unpreempted": []}
        per_round = []
        for seed in range(rounds):
            timings = run_round(gpu_count, operations, seed)
            per_round.append({kind: summary(timings[kind]) for kind in merged})
            for kind in merged:
                merged[kind] += timings[kind]
        result = {kind: summary(samples) for kind, samples in merged.items()}
        result["per_round"] = per_round
        result["median_of_round_p99_ms"] = {
            kind: round(statistics.median(r[kind]["p99_ms"] for r in per_round if r[kind]["count"]), 4)
            for kind in merged
            if any(r[kind]["count"] for r in per_round)
        }
        report["configs"][f"{gpu_count}_gpus"] = result
        for kind in ("allocate", "release"):
            worst = max(worst, result["median_of_round_p99_ms"][kind])
        print(
            f"{gpu_count:>2} GPUs, {USERS} users: "
            + "; ".join(
                f"{kind} p50 {result[kind]['p50_ms']:.2f} ms p99 {result[kind]['p99_ms']:.2f} ms "
                f"(n={result[kind]['count']})"
                for kind in merged
                if result[kind]["count"]
            )
        )
        print(
            f"   median over {rounds} rounds of each round's p99: "
            + ", ".join(f"{kind} {value:.2f} ms" for kind, value in result["median_of_round_p99_ms"].items())
        )
    report["load_average_after"] = os.getloadavg()
    print(
        f"load average before/after: {report['load_average_before'][0]:.2f} / {report['load_average_after'][0]:.2f} "
        f"on {os.cpu_count()} cores"
    )
    status = "PASS" if worst < TARGET_P99_MS else "FAIL"
    report["worst_median_round_p99_ms"] = round(worst, 4)
    report["status"] = status
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "allocator.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"allocator: p99_ms={worst:.2f} target={TARGET_P99_MS:g} {status}")  # median over rounds of round p99
    return 0 if status == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
