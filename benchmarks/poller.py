"""Telemetry poller benchmark (issue 5): the poller's CPU cost per GPU per tick on top of its
source (the H100 trace replayed, so NVML's own time is out of it), and how much the SQLite
ledger grows per GPU per day at a 5 s tick after rollups and retention, simulating days fast.

    python benchmarks/poller.py [--quick]

Writes benchmarks/results/poller.json; last line `poller: ... PASS|FAIL`; exit 0 only on PASS.
Targets: CPU <= 1 ms per GPU per tick (mean, rollups and pruning included); growth
<= 5 MB per GPU per day (the worst simulated day, when raw samples are still accumulating).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import itertools

from labgpu.db.telemetry_store import TelemetryDB
from labgpu.gpus.sampling import ReplayTelemetrySource
from labgpu.gpus.telemetry import DAY_S, GpuReading, Retention
from labgpu.services.attribution import ProcessAttributor
from labgpu.services.poller import DEFAULT_ROLL_UP_EVERY_S, DEFAULT_WRITE_EVERY, Poller

TRACE = ROOT / "tests" / "data" / "nvml-1xh100-load.json"
START = 1_800_000_000.0  # a whole hour
CPU_TARGET_MS = 1.0
GROWTH_TARGET_MB = 5.0


def machine() -> dict:
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {
        "platform": platform.platform(),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


class ManyGpuReplay:
    """The recorded H100 trace fanned out to ``gpus`` GPUs (distinct UUIDs and PIDs); with
    ``busy_only`` only the ticks under load, so every GPU has a process every tick."""

    def __init__(self, gpus: int, busy_only: bool) -> None:
        recorded = ReplayTelemetrySource(TRACE)
        ticks = [t for t in recorded.ticks if t[0].processes] if busy_only else recorded.ticks
        self.ticks = [
            [
                replace(
                    t[0],
                    uuid=f"GPU-bench-{g:04d}",
                    index=g,
                    processes=tuple(replace(p, pid=10_000 + g) for p in t[0].processes),
                )
                for g in range(gpus)
            ]
            for t in ticks
        ]
        self.position = 0

    def read(self) -> list[GpuReading]:
        tick = self.ticks[self.position % len(self.ticks)]
        self.position += 1
        return tick

    def close(self) -> None:
        pass


def synthetic_proc(root: Path, gpus: int) -> ProcessAttributor:
    """Each GPU's process in its own workspace container, as on a busy lab server."""
    labels = {}
    for g in range(gpus):
        cid = f"{g:064x}"
        (root / str(10_000 + g)).mkdir(parents=True)
        (root / str(10_000 + g) / "cgroup").write_text(f"0::/system.slice/docker-{cid}.scope\n")
        labels[cid] = {"org.labgpu.user": f"user{g % 5}", "org.labgpu.server": ""}
    return ProcessAttributor(labels.get, root)


def cpu_cost(work: Path, gpus: int, ticks: int, repeats: int) -> dict:
    """Per-tick CPU (process time) minus the source's, per GPU; rollups and pruning included."""
    runs = []
    for r in range(repeats):
        run_dir = work / f"cpu{gpus}-{r}"
        db = TelemetryDB(f"sqlite:///{run_dir}.sqlite")
        poller = Poller(
            ManyGpuReplay(gpus, busy_only=False),
            db,
            synthetic_proc(run_dir, gpus),
            interval_s=5,
            write_every=DEFAULT_WRITE_EVERY,
            roll_up_every_s=DEFAULT_ROLL_UP_EVERY_S,
        )
        reports = [poller.tick(START + i * 5) for i in range(ticks)]
        per_gpu_ms = [rep.poller_cpu_s * 1000 / gpus for rep in reports[1:]]  # tick 0 creates rows
        runs.append(
            {
                "median_ms": statistics.median(per_gpu_ms),
                "mean_ms": statistics.fmean(per_gpu_ms),
                "p95_ms": sorted(per_gpu_ms)[int(0.95 * (len(per_gpu_ms) - 1))],
                "source_ms": statistics.fmean(rep.source_cpu_s * 1000 / gpus for rep in reports),
            }
        )
    return {
        "gpus": gpus,
        "ticks": ticks,
        "repeats": repeats,
        "runs": runs,
        "median_of_means_ms": statistics.median(run["mean_ms"] for run in runs),
        "median_of_medians_ms": statistics.median(run["median_ms"] for run in runs),
    }


class TimedStore:
    """The SQLite store, timing its writes and its once-a-minute upkeep (CPU seconds), so the
    tick's cost splits into NVML, the write, the upkeep and the rest."""

    def __init__(self, inner: TelemetryDB) -> None:
        self.inner = inner
        self.write_cpu_s: list[float] = []
        self.upkeep_cpu_s: list[float] = []

    def write_ticks(self, ticks: Any) -> None:
        start = time.process_time()
        self.inner.write_ticks(ticks)
        self.write_cpu_s.append(time.process_time() - start)

    def roll_up(self, now: float) -> None:
        start = time.process_time()
        self.inner.roll_up(now)
        self.upkeep_cpu_s.append(time.process_time() - start)

    def prune(self, *args: Any) -> None:
        start = time.process_time()
        self.inner.prune(*args)
        self.upkeep_cpu_s.append(time.process_time() - start)


def growth(work: Path, gpus: int, days: int) -> dict:
    """Simulate ``days`` at a 5 s tick with default retention; bytes in use after each day."""
    db = TelemetryDB(f"sqlite:///{work / f'growth{gpus}.sqlite'}")
    poller = Poller(
        ManyGpuReplay(gpus, busy_only=True),
        db,
        synthetic_proc(work / f"growth{gpus}", gpus),
        interval_s=5,
        retention=Retention(),
        write_every=DEFAULT_WRITE_EVERY,
        roll_up_every_s=DEFAULT_ROLL_UP_EVERY_S,
    )
    per_day = int(DAY_S / 5)
    sizes = [db.size_bytes()]
    started = time.perf_counter()
    for day in range(days):
        for i in range(per_day):
            poller.tick(START + (day * per_day + i) * 5)
        sizes.append(db.size_bytes())
    daily = [(b - a) / gpus / 1e6 for a, b in itertools.pairwise(sizes)]
    # The once-a-minute roll-up and pruning with days of samples in the tables (what a fresh
    # database never shows): CPU per minute over 30 more simulated minutes.
    timed = TimedStore(db)
    poller.store = timed
    end = START + days * DAY_S
    for i in range(30 * 12):
        poller.tick(end + i * 5)
    upkeep_ms_per_minute = sum(timed.upkeep_cpu_s) * 1000 / 30
    with db.reader.connect() as conn:
        rows = {
            table: conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table}").scalar()
            for table in (
                "telemetry_gpu_sample",
                "telemetry_process_sample",
                "telemetry_gpu_rollup",
                "telemetry_owner_rollup",
            )
        }
    result = {
        "gpus": gpus,
        "days": days,
        "tick_s": 5,
        "processes_per_gpu": 1,
        "bytes_after_each_day": sizes,
        "mb_per_gpu_each_day": daily,
        "worst_day_mb_per_gpu": max(daily),
        "rows": rows,
        "upkeep_ms_per_minute": upkeep_ms_per_minute,
        "upkeep_ms_per_gpu_per_tick": upkeep_ms_per_minute / 12 / gpus,
        "simulated_in_s": time.perf_counter() - started,
    }
    if days >= 3:
        # From day 3 raw samples are pruned as fast as they come (48 h), so a day adds only its
        # minute and hour rollups; after 30 days minute rollups are pruned too.
        rollup_day = daily[-1]
        raw_day = daily[0] - rollup_day
        result["steady_state"] = {
            "raw_mb_per_gpu_per_day": raw_day,
            "rollup_mb_per_gpu_per_day": rollup_day,
            "size_mb_per_gpu_after_30_days_estimate": 2 * raw_day + 30 * rollup_day,
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description="Telemetry poller CPU cost and database growth")
    parser.add_argument("--quick", action="store_true", help="fewer ticks and one simulated day (under a minute)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="labgpu-poller-bench-") as tmp:
        work = Path(tmp)
        if args.quick:
            cpu = [cpu_cost(work, gpus, 240, 3) for gpus in (1, 8)]
            grow = growth(work, 1, 1)
        else:
            cpu = [cpu_cost(work, gpus, 1200, 5) for gpus in (1, 4, 8)]
            grow = growth(work, 2, 4)
    worst_cpu = max(c["median_of_means_ms"] for c in cpu)
    worst_day = grow["worst_day_mb_per_gpu"]
    ok = worst_cpu <= CPU_TARGET_MS and worst_day <= GROWTH_TARGET_MB
    result = {
        "machine": machine(),
        "quick": args.quick,
        "trace": str(TRACE.relative_to(ROOT)),
        "cpu_cost_per_gpu_per_tick": cpu,
        "db_growth": grow,
        "targets": {"cpu_ms_per_gpu_per_tick": CPU_TARGET_MS, "mb_per_gpu_per_day": GROWTH_TARGET_MB},
        "pass": ok,
    }
    out = ROOT / "benchmarks" / "results" / "poller.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    for c in cpu:
        print(
            f"{c['gpus']} GPU(s): poller CPU per GPU per tick mean {c['median_of_means_ms']:.3f} ms, "
            f"median {c['median_of_medians_ms']:.3f} ms (median over {c['repeats']} runs of {c['ticks']} ticks)"
        )
    print(
        f"growth per GPU per day at 5 s ({grow['days']} simulated days, {grow['gpus']} GPUs): "
        + ", ".join(f"{d:.2f} MB" for d in grow["mb_per_gpu_each_day"])
    )
    print(
        f"roll-up and pruning after {grow['days']} days of samples: {grow['upkeep_ms_per_minute']:.2f} ms CPU a "
        f"minute, {grow['upkeep_ms_per_gpu_per_tick']:.4f} ms per GPU per tick"
    )
    if "steady_state" in grow:
        st = grow["steady_state"]
        print(
            f"steady state per GPU: raw {st['raw_mb_per_gpu_per_day']:.2f} MB/day kept 2 days, rollups "
            f"{st['rollup_mb_per_gpu_per_day']:.2f} MB/day; "
            f"about {st['size_mb_per_gpu_after_30_days_estimate']:.1f} MB after 30 days"
        )
    print(
        f"poller: cpu_ms_per_gpu_per_tick={worst_cpu:.3f} target<={CPU_TARGET_MS} "
        f"db_mb_per_gpu_per_day={worst_day:.2f} target<={GROWTH_TARGET_MB} {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
