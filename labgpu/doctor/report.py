"""One doctor run: every check this machine allows, in order, each guarded so that one
crashing check becomes its own FAIL; and the report, as text for people or one JSON document.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

from labgpu.doctor.measure import (
    check_autograd,
    check_copy_bandwidth,
    check_cuda_available,
    check_matmuls,
    check_nccl,
    check_torch,
    import_torch,
    visible_uuids_from_torch,
)
from labgpu.doctor.probe import probe_machine, probe_shm, probe_workers
from labgpu.doctor.verdicts import (
    STATUSES,
    CheckResult,
    judge_driver,
    judge_shm,
    judge_simulated,
    judge_visible_devices,
)


def guarded(name: str, fn: Callable[[], CheckResult | list[CheckResult]]) -> list[CheckResult]:
    """Run one check; an unexpected error becomes that check's FAIL, so the others still run."""
    try:
        result = fn()
    except Exception as e:  # a doctor must report, not crash
        return [
            CheckResult(
                name,
                "FAIL",
                f"the check itself failed: {type(e).__name__}: {e}",
                "report this with the output of `labgpu-doctor --json`",
            )
        ]
    return result if isinstance(result, list) else [result]


def run_checks(
    quick: bool = False, skip_nccl: bool = False, workers: int | None = None, nccl_timeout_s: float = 300.0
) -> tuple[list[CheckResult], dict[str, Any]]:
    """Run every check this machine allows; return the results and what was found."""
    machine = probe_machine()
    torch, torch_error = import_torch()
    results: list[CheckResult] = []
    if machine.assigned_error:
        results.append(
            CheckResult(
                "assignment",
                "FAIL",
                machine.assigned_error,
                "LABGPU_GPUS is set by the hub; restart your server from the hub",
            )
        )
    if machine.simulated:
        results.append(judge_simulated(machine.assigned, os.environ.get("NVIDIA_VISIBLE_DEVICES")))
    results += guarded("torch", lambda: check_torch(torch, torch_error, machine))
    runtime = torch.version.cuda if torch is not None else None
    results += guarded(
        "driver", lambda: judge_driver(machine.driver, runtime, machine.driver_cuda, machine.gpu_expected)
    )
    gpu = False
    if torch is None:
        results.append(CheckResult("cuda", "SKIP", "needs PyTorch (see torch)"))
    else:
        results += guarded("cuda", lambda: check_cuda_available(torch, machine))
        gpu = results[-1].status == "PASS"
    if gpu:
        results += guarded(
            "devices", lambda: judge_visible_devices(visible_uuids_from_torch(torch), machine.assigned, "PyTorch")
        )
    elif machine.nvml_devices:
        results += guarded(
            "devices",
            lambda: judge_visible_devices([d["uuid"] for d in machine.nvml_devices], machine.assigned, "NVML"),
        )
    elif machine.simulated:
        results.append(CheckResult("devices", "SKIP", "simulated GPUs have no device (see simulated)"))
    elif machine.assigned:
        results.append(judge_visible_devices([], machine.assigned, "this container"))
    else:
        results.append(CheckResult("devices", "SKIP", "no GPUs visible and none assigned"))
    if torch is not None:
        results += guarded("autograd", lambda: check_autograd(torch, "cuda:0" if gpu else "cpu"))
    else:
        results.append(CheckResult("autograd", "SKIP", "needs PyTorch (see torch)"))
    no_gpu = "needs a GPU (see cuda)" if torch is not None else "needs PyTorch (see torch)"
    if gpu:
        results += guarded("matmul", lambda: check_matmuls(torch, quick))
        results += guarded("copy-bandwidth", lambda: check_copy_bandwidth(torch, machine, quick))
    else:
        results += [CheckResult(f"matmul-{m}", "SKIP", no_gpu) for m in ("fp32", "tf32", "bf16")]
        results.append(CheckResult("copy-bandwidth", "SKIP", no_gpu))
    shm_total, shm_free = probe_shm()
    results += guarded("shm", lambda: judge_shm(shm_total, shm_free, workers or probe_workers()))
    if skip_nccl:
        results.append(CheckResult("nccl", "SKIP", "skipped (--skip-nccl)"))
    elif gpu:
        results += guarded("nccl", lambda: check_nccl(torch, machine, quick, nccl_timeout_s))
    else:
        results.append(CheckResult("nccl", "SKIP", no_gpu))
    found = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "torch": getattr(torch, "__version__", None),
        "torch_error": torch_error,
        "cuda_runtime": runtime,
        "driver": machine.driver,
        "driver_source": machine.driver_source if machine.driver else None,
        "driver_cuda": machine.driver_cuda,
        "nvml_error": machine.nvml_error,
        "nvml_devices": machine.nvml_devices,
        "assigned": machine.assigned,
        "simulated": machine.simulated,
    }
    return results, found


def render_text(results: Sequence[CheckResult], found: dict[str, Any]) -> str:
    """The human report: one line per check, its fix indented below, a summary line last."""
    width = max(len(r.name) for r in results)
    gpus = ", ".join(d["name"] for d in found["nvml_devices"]) or "no GPU"
    lines = [
        f"labgpu-doctor on {found['host']}: {gpus}; driver {found['driver'] or 'none'}; "
        f"torch {found['torch'] or 'missing'}"
    ]
    for r in results:
        lines.append(f"{r.status:<4}  {r.name:<{width}}  {r.detail}")
        if r.fix and r.status in ("FAIL", "WARN"):
            lines.append(f"{'':<4}  {'':<{width}}  fix: {r.fix}")
    counts = summarize(results)
    verdict = "problems found" if exit_code(results) else "workspace OK"
    lines.append(f"labgpu-doctor: {verdict}: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES))
    return "\n".join(lines)


def render_json(results: Sequence[CheckResult], found: dict[str, Any], seconds: float) -> str:
    """The machine-readable report (``--json``): the verdict, the counts, what was found, every check."""
    document = {
        "doctor": "labgpu-doctor",
        "ok": exit_code(results) == 0,
        "summary": summarize(results),
        "seconds": round(seconds, 2),
        "machine": found,
        "checks": [r.to_json() for r in results],
    }
    return json.dumps(document, indent=2, default=str)


def summarize(results: Sequence[CheckResult]) -> dict[str, int]:
    """Counts of each status."""
    return {s: sum(r.status == s for r in results) for s in STATUSES}


def exit_code(results: Sequence[CheckResult]) -> int:
    """0 when nothing FAILs, else 1."""
    return 1 if any(r.status == "FAIL" for r in results) else 0
