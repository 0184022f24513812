"""gpu_doctor: run labgpu-doctor on a real GPU machine and hold its bf16 matmul figure against
a bare PyTorch loop on the same card in the same run (target: doctor >= 90% of the bare loop).

    python3 benchmarks/gpu_doctor.py [--quick] [--tag h100] [--out-dir DIR]

Order: bare loop, doctor (full), doctor (--quick), bare loop again; the doctor is compared
with the better of the two bare-loop medians. Writes DIR/doctor_TAG.json (all figures, both
doctor reports, the machine) and DIR/doctor_TAG.txt (the doctor's text report); the last
line printed is `gpu_doctor: ... PASS|FAIL`. Needs PyTorch with a GPU; NCCL figures appear when
the machine has 2 or more GPUs.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labgpu.doctor.report import render_text
from labgpu.doctor.verdicts import CheckResult

TARGET_FRACTION = 0.90


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bare_bf16_loop(torch, n: int, iters: int, rounds: int) -> dict:
    """The plain loop a researcher would write: c = a @ b, synchronize, wall clock."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    start = time.perf_counter()
    while time.perf_counter() - start < 0.5:  # same clock ramp-up the doctor gets
        for _ in range(10):
            c = a @ b
        torch.cuda.synchronize()
    per_call = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(iters):
            c = a @ b
        torch.cuda.synchronize()
        per_call.append((time.perf_counter() - t0) / iters)
    del a, b, c
    torch.cuda.empty_cache()
    tflops = sorted(2 * n**3 / s / 1e12 for s in per_call)
    return {
        "n": n,
        "iters": iters,
        "rounds": rounds,
        "tflops_median": round(statistics.median(tflops), 2),
        "tflops_min": round(tflops[0], 2),
        "tflops_max": round(tflops[-1], 2),
    }


def run_doctor(args: list[str]) -> tuple[dict, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "labgpu.doctor", "--json", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    wall = time.perf_counter() - started
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise SystemExit(
            f"gpu_doctor: labgpu-doctor {' '.join(args)} printed no JSON (exit "
            f"{done.returncode}): {done.stderr[-2000:]}"
        ) from None
    report["exit_code"] = done.returncode
    return report, wall


def check(report: dict, name: str) -> dict:
    return next(c for c in report["checks"] if c["name"] == name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer bare-loop rounds; the doctor with --quick only")
    parser.add_argument("--tag", default="gpu", help="names the result files: doctor_TAG.json/.txt")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_doctor: no GPU here (torch.cuda.is_available() is False) FAIL")
        return 1
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rounds = 3 if args.quick else 7
    bare_before = bare_bf16_loop(torch, 8192, 50, rounds)
    doctor_runs = {}
    for label, flags in [("quick", ["--quick"])] if args.quick else [("full", []), ("quick", ["--quick"])]:
        doctor_runs[label], wall = run_doctor(flags)
        doctor_runs[label]["wall_seconds"] = round(wall, 2)
    bare_after = bare_bf16_loop(torch, 8192, 50, rounds)

    main_run = doctor_runs["full" if "full" in doctor_runs else "quick"]
    bf16 = check(main_run, "matmul-bf16")
    doctor_tflops = bf16["figures"]["devices"][0]["tflops"] if bf16["status"] != "SKIP" else 0.0
    bare_best = max(bare_before["tflops_median"], bare_after["tflops_median"])
    fraction = doctor_tflops / bare_best
    nccl = check(main_run, "nccl")
    busbw = None
    if nccl["status"] in ("PASS", "WARN"):
        busbw = max(nccl["figures"]["sizes"], key=lambda s: s["bytes"])["busbw_gbps"]
    ok = fraction >= TARGET_FRACTION and main_run["summary"]["FAIL"] == 0

    document = {
        "benchmark": "gpu_doctor",
        "date": datetime.datetime.now(datetime.UTC).isoformat(),
        "machine": {
            "platform": platform.platform(),
            "cpu_model": cpu_model(),
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        },
        "target": f"doctor bf16 matmul >= {TARGET_FRACTION:.0%} of the bare loop, and no check FAILs",
        "bare_loop_before": bare_before,
        "bare_loop_after": bare_after,
        "doctor_bf16_tflops": doctor_tflops,
        "bare_bf16_tflops_best": bare_best,
        "doctor_over_bare": round(fraction, 3),
        "nccl_busbw_gbps": busbw,
        "doctor": doctor_runs,
        "pass": ok,
    }
    (out_dir / f"doctor_{args.tag}.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    texts = []
    for label, run in doctor_runs.items():
        results = [CheckResult(c["name"], c["status"], c["detail"], c["fix"], c["figures"]) for c in run["checks"]]
        texts.append(
            f"$ labgpu-doctor{' --quick' if label == 'quick' else ''}   "
            f"(exit {run['exit_code']}, {run['wall_seconds']} s)\n" + render_text(results, run["machine"])
        )
    (out_dir / f"doctor_{args.tag}.txt").write_text("\n\n".join(texts) + "\n")

    print("\n\n".join(texts))
    print(
        f"bare bf16 loop 8192^3: before {bare_before['tflops_median']} TFLOP/s, after "
        f"{bare_after['tflops_median']} TFLOP/s; doctor {doctor_tflops} TFLOP/s"
        + (f"; NCCL bus bandwidth {busbw} GB/s" if busbw is not None else "")
    )
    print(
        f"gpu_doctor: doctor_over_bare={fraction:.3f} target={TARGET_FRACTION:.2f} "
        f"fails={main_run['summary']['FAIL']} {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
