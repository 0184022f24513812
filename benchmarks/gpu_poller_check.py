"""The real-GPU check of the telemetry poller (issue 5): runs the real poller (NVML source,
SQLite store) while a PyTorch bf16 matmul load runs on ONE GPU, then idles, and checks:
utilization >= 90% during the load and <= 5% after, the load's PID attributed (through a
/proc/PID/cgroup in the Docker v2 layout and a label lookup) with its GPU memory, no process
on the other GPUs, and the poller's own CPU cost per GPU per tick with real NVML.
It also records the NVML trace the unit tests replay (tests/data/nvml-*.json).

    python3 benchmarks/gpu_poller_check.py            # on a GPU machine; writes under $OUT
    python3 benchmarks/gpu_poller_check.py --source replay:tests/data/nvml-h100-load.json --fake-load

Last line: `gpu_poller_check: ... PASS` (or FAIL); exit 0 only on PASS.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labgpu.db.telemetry_store import GPU, GPU_SAMPLE, OWNER, PROCESS_SAMPLE, TelemetryDB
from labgpu.gpus.sampling import NvmlTelemetrySource, RecordingSource, ReplayTelemetrySource
from labgpu.gpus.telemetry import WORKSPACE, Retention
from labgpu.services.attribution import ProcessAttributor
from labgpu.services.poller import Poller

FAKE_CONTAINER = "ab" * 32
LOAD_CODE = r"""
import os, sys, time, torch
seconds = float(sys.argv[1])
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn_like(a)
(a @ b).sum().item()
torch.cuda.synchronize()
print("ready", os.getpid(), flush=True)
end = time.time() + seconds
n = 0
while time.time() < end:
    for _ in range(10):
        c = a @ b
    torch.cuda.synchronize()
    n += 10
print("done", n, flush=True)
"""
FAKE_LOAD_CODE = r"""
import os, sys, time
print("ready", os.getpid(), flush=True)
time.sleep(float(sys.argv[1]))
print("done 0", flush=True)
"""


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    try:
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        info["cpu_model"] = platform.processor()
    for key, cmd in (
        ("gpus", ["nvidia-smi", "-L"]),
        ("driver", ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
    ):
        try:
            info[key] = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as error:
            info[key] = f"unavailable: {error}"
    for module in ("pynvml", "torch", "sqlalchemy"):
        try:
            mod = __import__(module)
            info[module] = getattr(mod, "__version__", "present")
        except ImportError as error:
            info[module] = f"missing: {error}"
    return info


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="nvml", help="nvml, or replay:PATH for a dry run on CPU")
    parser.add_argument("--fake-load", action="store_true", help="a sleeping process instead of torch (dry run)")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--idle-before", type=float, default=6.0)
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--idle-after", type=float, default=20.0)
    parser.add_argument("--burst-ticks", type=int, default=300, help="back-to-back ticks for the CPU cost")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    info = machine()
    print(json.dumps(info, indent=1), flush=True)
    inner = (
        NvmlTelemetrySource() if args.source == "nvml" else ReplayTelemetrySource(args.source.removeprefix("replay:"))
    )
    source = RecordingSource(inner)
    first = inner.read()
    gpu_count = len(first)
    load_gpu = first[-1]  # on a multi-GPU machine the load goes on the last GPU only
    words = load_gpu.name.replace("NVIDIA", "").split() or ["gpu"]
    tag = f"{gpu_count}x{words[0]}".lower()
    tag = "".join(c if c.isalnum() else "-" for c in tag)
    print(f"{gpu_count} GPU(s); load on GPU {load_gpu.index} {load_gpu.uuid} ({load_gpu.name}); tag {tag}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="labgpu-poller-"))
    proc_root = work / "proc"
    labels = {FAKE_CONTAINER: {"org.labgpu.user": "alice", "org.labgpu.server": "train"}}
    db = TelemetryDB(f"sqlite:///{work / 'ledger.sqlite'}")
    poller = Poller(
        source, db, ProcessAttributor(labels.get, proc_root), interval_s=args.interval, retention=Retention()
    )

    env = dict(os.environ, CUDA_VISIBLE_DEVICES=load_gpu.uuid)
    t0 = time.time()
    reports = []
    load = None
    load_pid = None
    load_started = load_ended = None
    real_cgroup = ""
    deadline = t0 + args.idle_before + args.load_seconds + args.idle_after + 60
    next_tick = time.monotonic()
    while time.time() < deadline:
        now = time.time()
        if load is None and now - t0 >= args.idle_before:
            load = subprocess.Popen(
                [sys.executable, "-c", FAKE_LOAD_CODE if args.fake_load else LOAD_CODE, str(args.load_seconds)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            ready = load.stdout.readline().split()  # waits for CUDA init and the first matmul
            if len(ready) < 2:
                print(f"the load did not start (exit {load.wait()}); see its error above", flush=True)
                load_started = load_ended = time.time()
                break
            load_pid = int(ready[1])
            load_started = time.time()
            real_cgroup = (
                Path(f"/proc/{load_pid}/cgroup").read_text() if Path(f"/proc/{load_pid}/cgroup").exists() else ""
            )
            (proc_root / str(load_pid)).mkdir(parents=True)
            (proc_root / str(load_pid) / "cgroup").write_text(f"0::/system.slice/docker-{FAKE_CONTAINER}.scope\n")
            print(
                f"load ready: pid {load_pid} after {load_started - now:.1f} s; "
                f"its real cgroup: {real_cgroup.strip()!r}",
                flush=True,
            )
            next_tick = time.monotonic()
        if load is not None and load_ended is None and load.poll() is not None:
            load_ended = time.time()
            print(f"load exited ({load.stdout.read().strip()}) at +{load_ended - t0:.1f} s", flush=True)
        if load_ended is not None and time.time() - load_ended >= args.idle_after:
            break
        report = poller.tick(time.time())
        reports.append(report)
        next_tick += args.interval
        time.sleep(max(0.0, next_tick - time.monotonic()))
    db.roll_up(time.time() + 60)

    # ---- what the poller recorded -------------------------------------------------------------
    with db.reader.connect() as conn:
        gpu_rows = (
            conn.execute(GPU_SAMPLE.join(GPU, GPU.c.id == GPU_SAMPLE.c.gpu_id).select().order_by(GPU_SAMPLE.c.ts_ms))
            .mappings()
            .all()
        )
        proc_rows = (
            conn.execute(
                PROCESS_SAMPLE.join(GPU, GPU.c.id == PROCESS_SAMPLE.c.gpu_id)
                .join(OWNER, OWNER.c.id == PROCESS_SAMPLE.c.owner_id)
                .select()
                .order_by(PROCESS_SAMPLE.c.ts_ms)
            )
            .mappings()
            .all()
        )

    def utils(uuid: str, start: float, end: float) -> list[int]:
        return [r["util_gpu"] for r in gpu_rows if r["uuid"] == uuid and start * 1000 <= r["ts_ms"] < end * 1000]

    load_end = load_ended or time.time()
    load_window = (load_started + 3, load_end - 1)  # skip ramp-up and the final partial tick
    after_window = (load_end + 3, time.time() + 1)
    checks: list[tuple[str, bool, str]] = []
    during = utils(load_gpu.uuid, *load_window)
    after = utils(load_gpu.uuid, *after_window)
    mean_during = statistics.fmean(during) if during else float("nan")
    mean_after = statistics.fmean(after) if after else float("nan")
    checks.append(
        (
            "utilization during load >= 90%",
            bool(during) and mean_during >= 90,
            f"mean {mean_during:.1f}% over {len(during)} samples (min {min(during, default=-1)}%)",
        )
    )
    checks.append(
        (
            "utilization after load <= 5%",
            bool(after) and mean_after <= 5,
            f"mean {mean_after:.1f}% over {len(after)} samples (max {max(after, default=-1)}%)",
        )
    )
    busy = db.busy_fraction([load_gpu.uuid], *load_window)
    checks.append(("busy_fraction query during load >= 0.9", busy is not None and busy >= 0.9, f"{busy}"))
    load_procs = [r for r in proc_rows if r["pid"] == load_pid]
    on_load_gpu = [r for r in load_procs if r["uuid"] == load_gpu.uuid]
    max_mem = max((r["memory_used_mib"] or 0 for r in on_load_gpu), default=0)
    attributed = {(r["kind"], r["user"], r["server"]) for r in on_load_gpu}
    checks.append(
        (
            "load PID recorded on its GPU with its memory",
            bool(on_load_gpu) and max_mem >= 500,
            f"{len(on_load_gpu)} samples, up to {max_mem} MiB",
        )
    )
    checks.append(
        ("load PID attributed to alice/train", attributed == {(WORKSPACE, "alice", "train")}, f"{sorted(attributed)}")
    )
    sm = [r["sm_util"] for r in on_load_gpu if r["sm_util"] is not None]
    checks.append(
        (
            "per-process SM utilization seen",
            bool(sm),
            f"{len(sm)} samples, median {statistics.median(sm) if sm else None}",
        )
    )
    usage = db.usage(t0, time.time() + 1).by_user.get("alice")
    checks.append(
        (
            "usage query: alice has busy GPU-seconds",
            usage is not None and usage.gpu_hours_busy * 3600 >= 0.8 * (load_window[1] - load_window[0]),
            f"{usage}",
        )
    )
    if gpu_count > 1:
        elsewhere = {r["uuid"] for r in load_procs if r["uuid"] != load_gpu.uuid}
        others_util = [
            r["util_gpu"]
            for r in gpu_rows
            if r["uuid"] != load_gpu.uuid and load_window[0] * 1000 <= r["ts_ms"] < load_window[1] * 1000
        ]
        checks.append(("multi-GPU: load PID on no other GPU", not elsewhere, f"also on {sorted(elsewhere)}"))
        checks.append(
            (
                "multi-GPU: other GPUs idle during load (<= 5%)",
                bool(others_util) and max(others_util) <= 5,
                f"max {max(others_util, default=-1)}% over {len(others_util)} samples",
            )
        )

    # ---- CPU cost per tick with real NVML -----------------------------------------------------
    burst = [poller.tick(time.time()) for _ in range(args.burst_ticks)]
    all_reports = reports + burst
    nvml_ms = [r.source_cpu_s * 1000 / r.gpus for r in all_reports]
    poller_ms = [r.poller_cpu_s * 1000 / r.gpus for r in all_reports]
    cost = {
        "ticks": len(all_reports),
        "gpus": gpu_count,
        "nvml_cpu_ms_per_gpu_median": statistics.median(nvml_ms),
        "nvml_cpu_ms_per_gpu_p95": percentile(nvml_ms, 0.95),
        "poller_cpu_ms_per_gpu_median": statistics.median(poller_ms),
        "poller_cpu_ms_per_gpu_p95": percentile(poller_ms, 0.95),
        "poller_cpu_ms_per_gpu_mean": statistics.fmean(poller_ms),
    }
    checks.append(
        (
            "poller CPU <= 1 ms per GPU per tick on top of NVML (median)",
            cost["poller_cpu_ms_per_gpu_median"] <= 1.0,
            f"median {cost['poller_cpu_ms_per_gpu_median']:.3f} ms, p95 {cost['poller_cpu_ms_per_gpu_p95']:.3f} ms; "
            f"NVML median {cost['nvml_cpu_ms_per_gpu_median']:.3f} ms",
        )
    )

    # ---- write everything ---------------------------------------------------------------------
    trace = source.trace(
        {
            **info,
            "load_gpu": load_gpu.uuid,
            "load_pid": load_pid,
            "load_started_s": None if load_started is None else round(load_started - t0, 2),
            "load_ended_s": None if load_ended is None else round(load_ended - t0, 2),
            "load_real_cgroup": real_cgroup.strip(),
        },
        args.interval,
    )
    trace["ticks"] = trace["ticks"][: len(reports) + 1]  # the timed run, not the burst
    (out / f"nvml-{tag}-load.json").write_text(json.dumps(trace, separators=(",", ":")))
    ok = all(passed for _, passed, _ in checks)
    result = {
        "machine": info,
        "tag": tag,
        "load_gpu": load_gpu.uuid,
        "load_pid": load_pid,
        "real_cgroup_of_load": real_cgroup.strip(),
        "checks": [{"check": n, "pass": p, "detail": d} for n, p, d in checks],
        "cpu_cost": cost,
        "ticks_timed": len(reports),
        "pass": ok,
    }
    (out / f"gpu_poller_{tag}.json").write_text(json.dumps(result, indent=1))
    lines = [f"{'PASS' if p else 'FAIL'}  {n}: {d}" for n, p, d in checks]
    (out / f"gpu_poller_{tag}.txt").write_text(json.dumps(info, indent=1) + "\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(
        f"gpu_poller_check: gpus={gpu_count} util_load={mean_during:.1f}% util_after={mean_after:.1f}% "
        f"poller_cpu_ms_per_gpu={cost['poller_cpu_ms_per_gpu_median']:.3f} target<=1.0 {'PASS' if ok else 'FAIL'}"
    )
    inner.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
