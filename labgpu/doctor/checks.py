"""labgpu-doctor: the workspace self-check (driver, CUDA, devices, autograd, matmul, copies,
/dev/shm, NCCL), each check PASS/WARN/FAIL/SKIP with the reason and the fix.

The decision logic (``driver_supports_cuda``, ``visible_matches_assigned``, ``shm_enough``,
``judge_throughput``, ...) is pure and takes plain numbers, so it is unit-tested without a GPU.
The measuring code at the bottom imports PyTorch and NVML lazily: this module imports and
runs on a machine with neither, and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["PASS", "WARN", "FAIL", "SKIP"]
STATUSES: tuple[Status, ...] = ("PASS", "WARN", "FAIL", "SKIP")

MIB = 1024**2
GIB = 1024**3


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict: what was found (detail), what to do when it is not PASS (fix),
    and the measured figures for --json."""

    name: str
    status: Status
    detail: str
    fix: str = ""
    figures: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "fix": self.fix,
            "figures": self.figures,
        }


# ---------------------------------------------------------------------------------------------
# Pure decision logic: plain data in, plain data out.
# ---------------------------------------------------------------------------------------------

# Minimum Linux driver for a CUDA runtime of major.minor. From CUDA 11.1 on, a runtime runs on
# any driver of its major version's floor (minor-version compatibility), so one row per major
# covers its later minors; a lookup takes the highest row of the same major at or below the
# runtime's minor.
MIN_DRIVER_FOR_CUDA: dict[tuple[int, int], str] = {
    (10, 0): "410.48",
    (10, 1): "418.39",
    (10, 2): "440.33",
    (11, 0): "450.36.06",
    (11, 1): "450.80.02",  # 11.1 .. 11.8
    (12, 0): "525.60.13",  # 12.0 .. 12.x
    (13, 0): "580.65.06",  # 13.0 .. 13.x
}


def parse_version(text: str) -> tuple[int, ...]:
    """'580.159.04' -> (580, 159, 4); raises ValueError naming the text when it is no version."""
    cleaned = text.strip()
    if not re.fullmatch(r"\d+(\.\d+)*", cleaned):
        raise ValueError(f"not a version number: {text!r} (expected digits and dots, e.g. 580.65.06)")
    return tuple(int(part) for part in cleaned.split("."))


def min_driver_for_cuda(cuda: str) -> str | None:
    """The minimum driver for CUDA runtime ``cuda`` ('12.8'), or None when this table does not
    know that major version."""
    major_minor = parse_version(cuda)
    major, minor = major_minor[0], (major_minor[1] if len(major_minor) > 1 else 0)
    rows = [key for key in MIN_DRIVER_FOR_CUDA if key[0] == major and key[1] <= minor]
    if not rows:
        return None
    return MIN_DRIVER_FOR_CUDA[max(rows)]


def driver_supports_cuda(driver: str, cuda: str) -> bool | None:
    """Whether driver ``driver`` runs CUDA runtime ``cuda``; None when the CUDA version is
    newer (or older) than the table knows."""
    floor = min_driver_for_cuda(cuda)
    if floor is None:
        return None
    return parse_version(driver) >= parse_version(floor)


def cudnn_version_text(code: int) -> str:
    """cuDNN's integer version as text: 92600 -> '9.26.0' (cuDNN 9), 8902 -> '8.9.2' (cuDNN 8)."""
    if code >= 90000:
        return f"{code // 10000}.{code % 10000 // 100}.{code % 100}"
    return f"{code // 1000}.{code % 1000 // 100}.{code % 100}"


def cuda_version_text(code: int) -> str:
    """NVML/CUDA's integer version (12080) as text ('12.8')."""
    return f"{code // 1000}.{(code % 1000) // 10}"


def judge_driver(
    driver: str | None, cuda_runtime: str | None, driver_cuda: str | None = None, gpu_expected: bool = False
) -> CheckResult:
    """Judge the driver against the CUDA runtime PyTorch was built with. ``driver_cuda`` is the
    newest CUDA the driver itself reports (NVML), shown for context."""
    name = "driver"
    if driver is None:
        if gpu_expected:
            return CheckResult(
                name,
                "FAIL",
                "GPUs are assigned to this workspace but no NVIDIA "
                "driver is visible (no NVML, no /proc/driver/nvidia/version)",
                "the container was started without the NVIDIA runtime: ask your "
                "admin to check the NVIDIA Container Toolkit on the GPU server",
            )
        return CheckResult(name, "SKIP", "no NVIDIA driver on this machine (no GPU): nothing to check")
    native = f" (natively CUDA {driver_cuda})" if driver_cuda else ""
    if cuda_runtime is None:
        return CheckResult(
            name,
            "SKIP",
            f"driver {driver}{native}; no CUDA runtime to compare with (PyTorch is missing or a CPU-only build)",
            figures={"driver": driver},
        )
    figures = {"driver": driver, "cuda_runtime": cuda_runtime, "driver_cuda": driver_cuda}
    try:
        supported = driver_supports_cuda(driver, cuda_runtime)
    except ValueError as e:
        return CheckResult(name, "WARN", f"cannot compare driver and CUDA versions: {e}", figures=figures)
    floor = min_driver_for_cuda(cuda_runtime)
    if supported is None:
        return CheckResult(
            name,
            "WARN",
            f"driver {driver}{native}; CUDA runtime {cuda_runtime} is not in this doctor's table of minimum drivers",
            "update labgpu (MIN_DRIVER_FOR_CUDA) or check NVIDIA's CUDA release notes for the minimum driver",
            figures,
        )
    figures["min_driver"] = floor
    if not supported:
        return CheckResult(
            name,
            "FAIL",
            f"driver {driver} is too old for CUDA {cuda_runtime} "
            f"(PyTorch's runtime): CUDA {cuda_runtime.split('.')[0]}.x needs "
            f"driver >= {floor}",
            f"ask your admin to install NVIDIA driver >= {floor} on the GPU server, "
            "or use an image whose PyTorch is built for an older CUDA",
            figures,
        )
    note = ""
    if driver_cuda and parse_version(driver_cuda) < parse_version(cuda_runtime):
        note = " (through CUDA minor-version compatibility)"
    return CheckResult(
        name, "PASS", f"driver {driver}{native} runs CUDA {cuda_runtime}{note}; needs >= {floor}", figures=figures
    )


GPU_UUID = re.compile(
    r"(?:GPU-|MIG-)?(?P<hex>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"|MIG-GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/\d+/\d+",
    re.IGNORECASE,
)


def normalize_gpu_uuid(text: str) -> str:
    """Canonical form of a GPU or MIG UUID for comparison: lower-case hex, no 'GPU-'/'MIG-'
    prefix (PyTorch prints UUIDs without it, NVML with it). Raises ValueError if not a UUID."""
    cleaned = text.strip()
    match = GPU_UUID.fullmatch(cleaned)
    if not match:
        raise ValueError(f"{text!r} is not a GPU UUID (expected GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    return (match.group("hex") or cleaned).lower()


def parse_assigned_gpus(text: str) -> list[str]:
    """LABGPU_GPUS ('GPU-a,GPU-b', empty for none) -> the UUIDs, in order; raises ValueError
    naming the bad entry and its position."""
    if not text.strip():
        return []
    uuids: list[str] = []
    for position, entry in enumerate(text.split(","), start=1):
        if not entry.strip():
            raise ValueError(f"LABGPU_GPUS entry {position} is empty (in {text!r})")
        try:
            normalize_gpu_uuid(entry)
        except ValueError as e:
            raise ValueError(f"LABGPU_GPUS entry {position}: {e}") from None
        if entry.strip().lower() in (u.lower() for u in uuids):
            raise ValueError(f"LABGPU_GPUS entry {position} repeats {entry.strip()!r}")
        uuids.append(entry.strip())
    return uuids


def visible_matches_assigned(visible: Sequence[str], assigned: Sequence[str]) -> bool:
    """True when the GPUs this process sees are exactly the assigned ones (order ignored)."""
    return sorted(map(normalize_gpu_uuid, visible)) == sorted(map(normalize_gpu_uuid, assigned))


def judge_visible_devices(visible: Sequence[str], assigned: Sequence[str] | None, source: str) -> CheckResult:
    """Compare the visible GPUs (from ``source``: 'PyTorch' or 'NVML') with LABGPU_GPUS."""
    name = "devices"
    figures = {"visible": list(visible), "assigned": None if assigned is None else list(assigned)}
    seen = ", ".join(visible) or "none"
    if assigned is None:
        return CheckResult(
            name,
            "SKIP",
            f"LABGPU_GPUS is not set (not a LabGPU workspace); {source} sees {len(visible)} GPU(s): {seen}",
            figures=figures,
        )
    if visible_matches_assigned(visible, assigned):
        return CheckResult(
            name, "PASS", f"{source} sees exactly the {len(assigned)} assigned GPU(s): {seen}", figures=figures
        )
    by_key = {normalize_gpu_uuid(u): u for u in visible}
    wanted = {normalize_gpu_uuid(u): u for u in assigned}
    missing = [wanted[k] for k in wanted if k not in by_key]
    extra = [by_key[k] for k in by_key if k not in wanted]
    parts = []
    if missing:
        parts.append(f"assigned but not visible: {', '.join(missing)}")
    if extra:
        parts.append(f"visible but not assigned: {', '.join(extra)}")
    fix = (
        "restart your server from the hub (File > Hub Control Panel) so it gets a fresh "
        "container; if it persists, tell your admin: the container's device request does "
        "not match the ledger"
    )
    if missing and "CUDA_VISIBLE_DEVICES" in os.environ:
        fix = (
            f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides GPUs: unset it "
            "in your shell or notebook; else " + fix
        )
    return CheckResult(
        name,
        "FAIL",
        f"{source} sees {len(visible)} GPU(s), LABGPU_GPUS assigns {len(assigned)}: " + "; ".join(parts),
        fix,
        figures,
    )


def expected_autograd(x: float, y: float) -> tuple[float, float, float]:
    """z = x^2 + 2xy + y^3 and its exact gradient (dz/dx = 2x + 2y, dz/dy = 2x + 3y^2)."""
    return x * x + 2 * x * y + y**3, 2 * x + 2 * y, 2 * x + 3 * y * y


def judge_autograd(device: str, got: tuple[float, float, float], x: float = 2.0, y: float = 3.0) -> CheckResult:
    """Compare autograd's (z, dz/dx, dz/dy) at (x, y) with the exact values."""
    want = expected_autograd(x, y)
    figures = {"device": device, "point": [x, y], "got": list(got), "expected": list(want)}
    ok = all(abs(g - w) <= 1e-4 * max(1.0, abs(w)) for g, w in zip(got, want, strict=False))
    text = f"z = x^2 + 2xy + y^3 at ({x:g}, {y:g}) on {device}: z = {got[0]:g}, dz/dx = {got[1]:g}, dz/dy = {got[2]:g}"
    if ok:
        return CheckResult("autograd", "PASS", text + " (exact)", figures=figures)
    return CheckResult(
        "autograd",
        "FAIL",
        text + f"; expected z = {want[0]:g}, dz/dx = {want[1]:g}, dz/dy = {want[2]:g}",
        "the GPU computes wrong results: stop using it and tell your admin "
        "(run `nvidia-smi -q -d ECC,ROW_REMAPPER` and the vendor's diagnostics)",
        figures,
    )


# Dense (no sparsity) peak TFLOP/s by model, from NVIDIA's data sheets: fp32 on CUDA cores,
# tf32 and bf16 on tensor cores. First matching pattern wins (more specific names first).
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    (r"\bGH200\b", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}),
    (r"\bH200\b", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}),
    (r"\bH100\b.*\bNVL\b", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.0}),
    (r"\bH100\b.*\bPCIe\b", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0}),
    (r"\bH100\b", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}),  # SXM ("H100 80GB HBM3")
    (r"\bA100\b", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
    (r"\bL40S\b", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0}),
    (r"\bL4\b", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0}),
    (r"\bRTX 4090\b", {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2}),
    (r"\bV100\b", {"fp32": 15.7}),
)

# Below these fractions of the data-sheet peak a card is slower than a healthy one of its kind
# (healthy H100s reach 0.7-0.8 in a plain 8192^3 loop): power-capped, throttled, or shared.
THROUGHPUT_PASS_FRACTION = 0.5
THROUGHPUT_FAIL_FRACTION = 0.2

# Relative Frobenius error of a matmul against a float64 reference, per mode: float32 lands
# far under 1e-4, tf32 (10-bit mantissa inputs) near 3e-4, bf16 operands/outputs near 3e-3.
MATMUL_ERROR_LIMIT = {"fp32": 1e-4, "tf32": 5e-3, "bf16": 3e-2}


def peak_tflops(model: str, mode: str) -> float | None:
    """Data-sheet dense peak of ``model`` ('NVIDIA H100 80GB HBM3') in ``mode``; None when unknown
    (including MIG slices, which get a fraction of the chip)."""
    if "MIG" in model:
        return None
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, model):
            return peaks.get(mode)
    return None


def judge_throughput(measured: float, peak: float | None) -> Status:
    """PASS at >= half the data-sheet peak, WARN above a fifth, FAIL below; PASS when no peak is
    known (the figure is still reported)."""
    if peak is None or peak <= 0:
        return "PASS"
    fraction = measured / peak
    if fraction >= THROUGHPUT_PASS_FRACTION:
        return "PASS"
    return "WARN" if fraction >= THROUGHPUT_FAIL_FRACTION else "FAIL"


def judge_matmul(mode: str, per_device: Sequence[dict[str, Any]]) -> CheckResult:
    """Judge matmul results, one dict per GPU: {index, model, tflops, rel_error, n}."""
    name = f"matmul-{mode}"
    limit = MATMUL_ERROR_LIMIT[mode]
    wrong = [d for d in per_device if not d["rel_error"] <= limit]  # NaN fails too
    if wrong:
        d = wrong[0]
        return CheckResult(
            name,
            "FAIL",
            f"GPU {d['index']} ({d['model']}) computes wrong {mode} "
            f"matrix products: relative error {d['rel_error']:.2e}, allowed {limit:.0e}",
            "stop using this GPU and tell your admin (ECC errors or a failing card)",
            {"devices": list(per_device)},
        )
    verdicts = []
    for d in per_device:
        peak = peak_tflops(d["model"], mode)
        d["peak_tflops"] = peak
        d["fraction_of_peak"] = None if peak is None else round(d["tflops"] / peak, 3)
        verdicts.append(judge_throughput(d["tflops"], peak))
    worst_index = max(range(len(per_device)), key=lambda i: STATUS_ORDER[verdicts[i]])
    worst, status = per_device[worst_index], verdicts[worst_index]
    peak = worst["peak_tflops"]
    against = (
        f"{worst['fraction_of_peak']:.0%} of the {peak:g} TFLOP/s data-sheet peak"
        if peak
        else f"no reference peak for {worst['model']}"
    )
    many = f" (slowest of {len(per_device)} GPUs)" if len(per_device) > 1 else ""
    detail = (
        f"{worst['tflops']:.1f} TFLOP/s on GPU {worst['index']} ({worst['model']}), "
        f"{worst['n']}^3, {against}{many}; results correct"
    )
    fix = ""
    if status != "PASS":
        fix = (
            "the GPU is slower than a healthy one: check `nvidia-smi -q -d PERFORMANCE,POWER` "
            "for throttle reasons and whether other processes use it (`nvidia-smi`)"
        )
    return CheckResult(name, status, detail, fix, {"devices": list(per_device)})


STATUS_ORDER: dict[str, int] = {"PASS": 0, "SKIP": 1, "WARN": 2, "FAIL": 3}

# PCIe data rate per lane and direction in GB/s after encoding overhead, by generation.
PCIE_GBPS_PER_LANE = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}
COPY_PASS_FRACTION = 0.5  # a healthy pinned copy reaches 0.7-0.9 of the link's rate
COPY_FLOOR_GBPS = 10.0  # without link information: about PCIe Gen3 x16 in practice


def pcie_link_gbps(generation: int | None, width: int | None) -> float | None:
    """Theoretical one-direction rate of a PCIe link, or None when unknown."""
    if not generation or not width or generation not in PCIE_GBPS_PER_LANE:
        return None
    return PCIE_GBPS_PER_LANE[generation] * width


def judge_copy_bandwidth(h2d_gbps: float, d2h_gbps: float, link_gbps: float | None, link_text: str = "") -> CheckResult:
    """Judge pinned host<->device copy rates against the PCIe link (or a floor when unknown)."""
    worst = min(h2d_gbps, d2h_gbps)
    figures = {"h2d_gbps": round(h2d_gbps, 2), "d2h_gbps": round(d2h_gbps, 2), "link_gbps": link_gbps}
    measured = f"host->device {h2d_gbps:.1f} GB/s, device->host {d2h_gbps:.1f} GB/s (pinned)"
    expected = (COPY_PASS_FRACTION * link_gbps) if link_gbps else COPY_FLOOR_GBPS
    against = (
        f"link {link_text} carries {link_gbps:.0f} GB/s"
        if link_gbps
        else f"expected >= {COPY_FLOOR_GBPS:g} GB/s (PCIe Gen3 x16 or better)"
    )
    if worst >= expected:
        return CheckResult("copy-bandwidth", "PASS", f"{measured}; {against}", figures=figures)
    return CheckResult(
        "copy-bandwidth",
        "WARN",
        f"{measured}: below {expected:.1f} GB/s; {against}",
        "data loading to the GPU will be slow: ask your admin to check the GPU's "
        "PCIe slot and link (`nvidia-smi -q -d PCIE` under load shows the current "
        "generation and width)",
        figures,
    )


# What one DataLoader worker keeps in /dev/shm: its prefetched batches (prefetch_factor 2) of
# up to 128 MiB each (128 ImageNet images at 224x224 in float32 are 77 MB).
SHM_PER_WORKER_BYTES = 256 * MIB
DOCKER_DEFAULT_SHM_BYTES = 64 * MIB


def shm_needed(workers: int, per_worker_bytes: int = SHM_PER_WORKER_BYTES) -> int:
    """Bytes of /dev/shm that ``workers`` DataLoader workers need (at least one worker's worth)."""
    return max(1, workers) * per_worker_bytes


def shm_enough(shm_bytes: int, workers: int, per_worker_bytes: int = SHM_PER_WORKER_BYTES) -> bool:
    """Whether a /dev/shm of ``shm_bytes`` holds what ``workers`` DataLoader workers need."""
    return shm_bytes >= shm_needed(workers, per_worker_bytes)


def format_bytes(n: float) -> str:
    """1610612736 -> '1.5 GiB' (binary units, as `df -h` and Docker's --shm-size use)."""
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}".replace(".0 ", " ")
    return f"{int(n)} B"


def judge_shm(total_bytes: int | None, free_bytes: int | None, workers: int, path: str = "/dev/shm") -> CheckResult:
    """Judge /dev/shm's size (and free space) against ``workers`` DataLoader workers."""
    name = "shm"
    if total_bytes is None:
        return CheckResult(
            name,
            "FAIL",
            f"{path} does not exist",
            "PyTorch DataLoader workers and NCCL need /dev/shm: ask your admin "
            "to start workspaces with a shared-memory mount (LABGPU_SHM_SIZE)",
        )
    needed = shm_needed(workers)
    figures = {"total_bytes": total_bytes, "free_bytes": free_bytes, "workers": workers, "needed_bytes": needed}
    size = f"{path} is {format_bytes(total_bytes)}"
    fits = max(0, total_bytes // SHM_PER_WORKER_BYTES)
    fix = (
        f"ask your admin to raise LABGPU_SHM_SIZE to at least {format_bytes(needed)} "
        f"(docker run --shm-size={-(-needed // GIB)}g), or use DataLoader(num_workers<={fits})"
    )
    if total_bytes < SHM_PER_WORKER_BYTES:
        default = " (Docker's default)" if total_bytes == DOCKER_DEFAULT_SHM_BYTES else ""
        return CheckResult(
            name,
            "FAIL",
            f"{size}{default}: too small for even one DataLoader "
            f"worker ({format_bytes(SHM_PER_WORKER_BYTES)}); workers die with "
            "'bus error' or 'unable to write to file </torch_...>'",
            fix,
            figures,
        )
    if not shm_enough(total_bytes, workers):
        return CheckResult(
            name, "WARN", f"{size}: {workers} DataLoader workers need {format_bytes(needed)}", fix, figures
        )
    if free_bytes is not None and free_bytes < needed:
        return CheckResult(
            name,
            "WARN",
            f"{size} but only {format_bytes(free_bytes)} is free; "
            f"{workers} DataLoader workers need {format_bytes(needed)}",
            f"free shared memory: remove stale files in {path} or stop other processes that hold it (e.g. old kernels)",
            figures,
        )
    return CheckResult(
        name,
        "PASS",
        f"{size} ({format_bytes(free_bytes or 0)} free): enough for "
        f"{workers} DataLoader workers ({format_bytes(needed)})",
        figures=figures,
    )


def cpus_from_cgroup(cpu_max: str | None, cfs_quota: str | None = None, cfs_period: str | None = None) -> float | None:
    """CPU limit from cgroup v2 'cpu.max' ('200000 100000' or 'max 100000') or v1 quota/period;
    None when unlimited or unknown."""
    try:
        if cpu_max is not None:
            quota, period = cpu_max.split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if cfs_quota is not None and cfs_period is not None:
            quota_us = int(cfs_quota)
            return None if quota_us <= 0 else quota_us / int(cfs_period)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def default_workers(affinity_cpus: int, cgroup_cpus: float | None, cap: int = 8) -> int:
    """The DataLoader worker count to plan /dev/shm for: the usable CPUs, at most ``cap``."""
    usable = affinity_cpus if cgroup_cpus is None else min(affinity_cpus, int(cgroup_cpus) or 1)
    return max(1, min(cap, usable))


def bus_bandwidth(algbw_gbps: float, ranks: int) -> float:
    """NCCL's bus bandwidth for all-reduce: algbw * 2(n-1)/n (what each link carries)."""
    return algbw_gbps * 2 * (ranks - 1) / ranks if ranks > 1 else 0.0


# All-reduce bus bandwidth below which the link is slower than its class: NVLink moves
# hundreds of GB/s, PCIe (or shared memory through the host) tens.
NCCL_FLOOR_GBPS = {"nvlink": 50.0, "pcie": 3.0}


def judge_bus_bandwidth(busbw_gbps: float, link: str) -> Status:
    """PASS when the bus bandwidth reaches the floor of its link class ('nvlink' or 'pcie')."""
    return "PASS" if busbw_gbps >= NCCL_FLOOR_GBPS.get(link, NCCL_FLOOR_GBPS["pcie"]) else "WARN"


def judge_nccl(report: dict[str, Any], link: str, link_text: str) -> CheckResult:
    """Judge the NCCL worker's report (see labgpu.doctor.nccl): correctness first, then the
    bus bandwidth of the largest message."""
    name = "nccl"
    ranks = report["world_size"]
    if not report.get("allreduce_correct"):
        return CheckResult(
            name,
            "FAIL",
            f"all-reduce across {ranks} GPUs returned a wrong sum "
            f"({report.get('allreduce_got')}, expected {report.get('allreduce_expected')})",
            "tell your admin: GPU peer-to-peer transfers corrupt data; NCCL_P2P_DISABLE=1 works around it until fixed",
            report,
        )
    if not report.get("ddp_grads_equal"):
        return CheckResult(
            name,
            "FAIL",
            f"DistributedDataParallel across {ranks} GPUs left different gradients on different GPUs",
            "tell your admin: NCCL all-reduce is not consistent on this machine",
            report,
        )
    largest = max(report["sizes"], key=lambda s: s["bytes"])
    busbw = largest["busbw_gbps"]
    status = judge_bus_bandwidth(busbw, link)
    transports = ", ".join(report.get("transports") or []) or "not reported"
    detail = (
        f"all-reduce across {ranks} GPUs correct, DDP gradients agree; bus bandwidth "
        f"{busbw:.1f} GB/s at {format_bytes(largest['bytes'])} (algbw {largest['algbw_gbps']:.1f} "
        f"GB/s); link {link_text}; NCCL transport {transports}"
    )
    fix = ""
    if status != "PASS":
        fix = (
            f"below {NCCL_FLOOR_GBPS.get(link, 3.0):g} GB/s for {link_text}: check "
            "`nvidia-smi topo -m` and run with NCCL_DEBUG=INFO to see the transport "
            "(P2P disabled or IOMMU/ACS on PCIe switches slow all-reduce down)"
        )
    return CheckResult(name, status, detail, fix, report)


def summarize(results: Sequence[CheckResult]) -> dict[str, int]:
    """Counts of each status."""
    return {s: sum(r.status == s for r in results) for s in STATUSES}


def exit_code(results: Sequence[CheckResult]) -> int:
    """0 when nothing FAILs, else 1."""
    return 1 if any(r.status == "FAIL" for r in results) else 0


def nccl_launch_command(python: str, nproc: int, out_path: str, sizes_mb: Sequence[int], iters: int) -> list[str]:
    """The torchrun command line for the NCCL check (one process per assigned GPU)."""
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc_per_node={nproc}",
        "-m",
        "labgpu.doctor.nccl",
        "--out",
        out_path,
        "--sizes-mb",
        ",".join(str(s) for s in sizes_mb),
        "--iters",
        str(iters),
    ]


def parse_proc_driver_version(text: str) -> str | None:
    """The driver version from /proc/driver/nvidia/version ('NVRM version: NVIDIA UNIX x86_64
    Kernel Module  580.65.06  Sun Jul 27 ...'), or None."""
    match = re.search(r"NVRM version:.*?\s(\d+\.\d+(?:\.\d+)?)\s", text + " ")
    return match.group(1) if match else None


def nccl_transports(log: str) -> list[str]:
    """The transports NCCL chose, from its NCCL_DEBUG=INFO lines ('... via P2P/CUMEM/read')."""
    found = re.findall(r"\bvia (\S+)", log)
    return sorted(set(found))


# ---------------------------------------------------------------------------------------------
# Probes: read the machine (files, NVML). No PyTorch here.
# ---------------------------------------------------------------------------------------------


@dataclass
class Machine:
    """What the probes found before any check runs."""

    assigned: list[str] | None  # LABGPU_GPUS; None when unset
    assigned_error: str | None
    driver: str | None
    driver_source: str
    driver_cuda: str | None  # newest CUDA the driver supports natively (NVML)
    nvml_devices: list[dict[str, Any]]  # {uuid, name, pcie_gen, pcie_width, nvlinks}
    nvml_error: str | None
    device_nodes: bool  # /dev/nvidiactl exists

    @property
    def gpu_expected(self) -> bool:
        """Whether this machine should have a usable GPU."""
        return bool(self.assigned) or bool(self.nvml_devices) or self.device_nodes


def probe_nvml() -> tuple[str | None, str | None, list[dict[str, Any]], str | None]:
    """Driver version, driver CUDA version and the devices NVML sees, or the reason it can't."""
    try:
        import pynvml
    except ImportError:
        return None, None, [], "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return None, None, [], f"NVML: {e}"
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        try:
            driver_cuda = cuda_version_text(pynvml.nvmlSystemGetCudaDriverVersion_v2())
        except pynvml.NVMLError:
            driver_cuda = None
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            devices.append(
                {
                    "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
                    "name": _text(pynvml.nvmlDeviceGetName(handle)),
                    "pcie_gen": _nvml_or_none(pynvml.nvmlDeviceGetMaxPcieLinkGeneration, handle),
                    "pcie_width": _nvml_or_none(pynvml.nvmlDeviceGetMaxPcieLinkWidth, handle),
                    "nvlinks": _active_nvlinks(pynvml, handle),
                }
            )
        return driver, driver_cuda, devices, None
    except pynvml.NVMLError as e:
        return None, None, [], f"NVML: {e}"
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _nvml_or_none(fn: Callable[[Any], Any], handle: Any) -> Any:
    try:
        return fn(handle)
    except Exception:  # NVMLError_NotSupported and friends: the figure is simply unknown
        return None


def _active_nvlinks(pynvml: Any, handle: Any) -> int:
    active = 0
    for link in range(getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 18)):
        try:
            active += pynvml.nvmlDeviceGetNvLinkState(handle, link) == pynvml.NVML_FEATURE_ENABLED
        except Exception:  # links past the device's count raise; no NVLink raises NotSupported
            continue
    return active


def probe_machine(environ: dict[str, str] | None = None) -> Machine:
    """Read LABGPU_GPUS, the driver (NVML, else /proc) and the GPUs NVML sees."""
    environ = os.environ if environ is None else environ
    assigned: list[str] | None = None
    assigned_error = None
    if "LABGPU_GPUS" in environ:
        try:
            assigned = parse_assigned_gpus(environ["LABGPU_GPUS"])
        except ValueError as e:
            assigned, assigned_error = [], str(e)
    driver, driver_cuda, devices, nvml_error = probe_nvml()
    source = "NVML"
    if driver is None:
        try:
            driver = parse_proc_driver_version(Path("/proc/driver/nvidia/version").read_text())
            source = "/proc/driver/nvidia/version"
        except OSError:
            driver = None
    return Machine(
        assigned, assigned_error, driver, source, driver_cuda, devices, nvml_error, Path("/dev/nvidiactl").exists()
    )


def probe_shm(path: str = "/dev/shm") -> tuple[int | None, int | None]:
    """Total and free bytes of the filesystem at ``path``; (None, None) if it does not exist."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None, None
    return st.f_frsize * st.f_blocks, st.f_frsize * st.f_bavail


def probe_workers() -> int:
    """DataLoader workers to plan for: usable CPUs (affinity and cgroup quota), at most 8."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 1

    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    cgroup = cpus_from_cgroup(
        read("/sys/fs/cgroup/cpu.max"),
        read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
        read("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
    )
    return default_workers(affinity, cgroup)


# ---------------------------------------------------------------------------------------------
# Checks that measure with PyTorch (imported lazily, passed in as ``torch``).
# ---------------------------------------------------------------------------------------------


def import_torch() -> tuple[Any | None, str | None]:
    """PyTorch, or None and why not."""
    try:
        import torch
    except Exception as e:  # ImportError, or a broken install (missing CUDA libraries)
        return None, f"{type(e).__name__}: {e}"
    return torch, None


def check_torch(torch: Any, error: str | None, machine: Machine) -> CheckResult:
    """PyTorch is importable, and is a CUDA build where a GPU is expected."""
    if torch is None:
        return CheckResult(
            "torch",
            "FAIL",
            f"PyTorch is not installed in {sys.executable} ({error})",
            f"{sys.executable} -m pip install torch, or start a LabGPU workspace image (it ships PyTorch with CUDA)",
        )
    cuda = torch.version.cuda
    extras = []
    if cuda:
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        extras.append(f"CUDA {cuda}")
        if cudnn:
            extras.append(f"cuDNN {cudnn_version_text(cudnn)}")
        nccl = _nccl_version(torch)
        if nccl:
            extras.append(f"NCCL {nccl}")
    figures = {"torch": torch.__version__, "cuda": cuda, "nccl": _nccl_version(torch)}
    text = f"torch {torch.__version__}" + (f" ({', '.join(extras)})" if extras else "")
    if not cuda:
        status: Status = "FAIL" if machine.gpu_expected else "PASS"
        return CheckResult(
            "torch",
            status,
            text + ": a CPU-only build",
            "install the CUDA build of PyTorch (pip install torch from PyPI is one) to use the GPU"
            if status == "FAIL"
            else "",
            figures,
        )
    return CheckResult("torch", "PASS", text, figures=figures)


def _nccl_version(torch: Any) -> str | None:
    try:
        version = torch.cuda.nccl.version()
    except Exception:
        return None
    return ".".join(str(v) for v in version) if isinstance(version, tuple) else str(version)


def check_cuda_available(torch: Any, machine: Machine) -> CheckResult:
    """torch.cuda.is_available(), with the likely reason when it is False."""
    name = "cuda"
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        names = sorted({torch.cuda.get_device_name(i) for i in range(count)})
        return CheckResult(
            name,
            "PASS",
            f"torch.cuda.is_available() is True: {count} x {', '.join(names)}",
            figures={"device_count": count, "models": names},
        )
    if not machine.gpu_expected:
        return CheckResult(
            name,
            "SKIP",
            "no NVIDIA GPU on this machine (no driver, no "
            "/dev/nvidia* devices, LABGPU_GPUS empty or unset): GPU checks skipped",
        )
    if machine.assigned == []:
        return CheckResult(
            name,
            "SKIP",
            "this workspace has no GPUs assigned (LABGPU_GPUS is "
            "empty): GPU checks skipped; start a server with GPUs from the hub's "
            "spawn page to use one",
        )
    if not torch.version.cuda:
        reason, fix = "PyTorch is a CPU-only build", "install the CUDA build of PyTorch"
    elif machine.driver is None:
        reason = "no NVIDIA driver is visible in this container"
        fix = "ask your admin to check the NVIDIA Container Toolkit on the GPU server"
    elif "CUDA_VISIBLE_DEVICES" in os.environ and not os.environ["CUDA_VISIBLE_DEVICES"].strip(" ,"):
        reason = "CUDA_VISIBLE_DEVICES is empty, which hides every GPU"
        fix = "unset CUDA_VISIBLE_DEVICES"
    else:
        reason = f"the driver {machine.driver} and CUDA {torch.version.cuda} did not initialize"
        fix = "see the driver check above; `nvidia-smi` in a terminal shows whether the driver works"
    return CheckResult(name, "FAIL", f"torch.cuda.is_available() is False: {reason}", fix)


def visible_uuids_from_torch(torch: Any) -> list[str]:
    """UUIDs of the GPUs PyTorch sees, as 'GPU-...'."""
    uuids = []
    for i in range(torch.cuda.device_count()):
        raw = str(torch.cuda.get_device_properties(i).uuid)
        uuids.append(raw if raw.upper().startswith(("GPU-", "MIG-")) else f"GPU-{raw}")
    return uuids


def check_autograd(torch: Any, device: str) -> CheckResult:
    """Differentiate z = x^2 + 2xy + y^3 at (2, 3) on ``device``."""
    x = torch.tensor(2.0, device=device, requires_grad=True)
    y = torch.tensor(3.0, device=device, requires_grad=True)
    z = x**2 + 2 * x * y + y**3
    z.backward()
    return judge_autograd(device, (float(z.item()), float(x.grad.item()), float(y.grad.item())))


def time_per_call(
    torch: Any, fn: Callable[[], Any], device: Any, repeats: int, inner: int, warmup_s: float = 0.3
) -> list[float]:
    """Seconds per call of ``fn`` on a CUDA device: warm up for ``warmup_s`` (clocks ramp up),
    then ``repeats`` batches of ``inner`` calls timed with CUDA events."""
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    calls = 0
    while calls < 3 or time.perf_counter() - start < warmup_s:
        fn()
        calls += 1
        if calls % 4 == 0:
            torch.cuda.synchronize(device)
    torch.cuda.synchronize(device)
    times = []
    for _ in range(repeats):
        begin = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / 1000 / inner)
    return times


class _Fp32Precision:
    """Set float32 matmul precision ('ieee' or 'tf32') for a block, and restore it."""

    def __init__(self, torch: Any, precision: str):
        self.torch, self.precision = torch, precision

    def __enter__(self) -> None:
        matmul = self.torch.backends.cuda.matmul
        if hasattr(matmul, "fp32_precision"):  # PyTorch >= 2.9
            self.saved = ("new", matmul.fp32_precision)
            matmul.fp32_precision = self.precision
        else:
            self.saved = ("old", self.torch.get_float32_matmul_precision())
            self.torch.set_float32_matmul_precision("high" if self.precision == "tf32" else "highest")

    def __exit__(self, *exc: Any) -> None:
        kind, value = self.saved
        if kind == "new":
            self.torch.backends.cuda.matmul.fp32_precision = value
        else:
            self.torch.set_float32_matmul_precision(value)


def measure_matmul(torch: Any, index: int, mode: str, n: int, repeats: int) -> dict[str, Any]:
    """TFLOP/s of an n^3 matmul on GPU ``index`` in ``mode`` (fp32, tf32, bf16), and the relative
    error of a 1024^3 product against float64 on fresh random inputs."""
    device = torch.device("cuda", index)
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    with torch.cuda.device(device), _Fp32Precision(torch, "tf32" if mode == "tf32" else "ieee"):
        a = torch.randn(1024, 1024, device=device, dtype=dtype)
        b = torch.randn(1024, 1024, device=device, dtype=dtype)
        ref = a.double() @ b.double()
        rel_error = float(torch.linalg.norm((a @ b).double() - ref) / torch.linalg.norm(ref))
        del a, b, ref
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        c = torch.empty(n, n, device=device, dtype=dtype)
        # ~20 ms per timed batch whatever the speed, so event resolution does not matter.
        inner = 10 if mode == "bf16" else 3
        seconds = statistics.median(time_per_call(torch, lambda: torch.matmul(a, b, out=c), device, repeats, inner))
        del a, b, c
    return {
        "index": index,
        "model": torch.cuda.get_device_name(index),
        "mode": mode,
        "n": n,
        "tflops": round(2 * n**3 / seconds / 1e12, 2),
        "seconds_median": seconds,
        "rel_error": rel_error,
    }


def check_matmuls(torch: Any, quick: bool) -> list[CheckResult]:
    """fp32, tf32 and bf16 matmul throughput and correctness on every visible GPU."""
    results = []
    for mode in ("fp32", "tf32", "bf16"):
        per_device = []
        for index in range(torch.cuda.device_count()):
            free, _ = torch.cuda.mem_get_info(index)
            n = 8192 if free > 4 * GIB else 4096
            per_device.append(measure_matmul(torch, index, mode, n, repeats=5 if quick else 15))
        results.append(judge_matmul(mode, per_device))
    torch.cuda.empty_cache()
    return results


def check_copy_bandwidth(torch: Any, machine: Machine, quick: bool) -> CheckResult:
    """Pinned host<->device copy bandwidth on GPU 0, against its PCIe link."""
    device = torch.device("cuda", 0)
    nbytes = (64 if quick else 256) * MIB
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    host.fill_(1)
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    repeats = 5 if quick else 10
    h2d = statistics.median(time_per_call(torch, lambda: dev.copy_(host, non_blocking=True), device, repeats, 2))
    d2h = statistics.median(time_per_call(torch, lambda: host.copy_(dev, non_blocking=True), device, repeats, 2))
    del host, dev
    uuid = visible_uuids_from_torch(torch)[0]
    nvml = _nvml_device(machine, uuid)
    gen, width = (nvml or {}).get("pcie_gen"), (nvml or {}).get("pcie_width")
    link = pcie_link_gbps(gen, width)
    result = judge_copy_bandwidth(
        nbytes / h2d / 1e9, nbytes / d2h / 1e9, link, f"PCIe Gen{gen} x{width}" if link else ""
    )
    result.figures["bytes"] = nbytes
    return result


def _nvml_device(machine: Machine, uuid: str) -> dict[str, Any] | None:
    for d in machine.nvml_devices:
        try:
            if normalize_gpu_uuid(d["uuid"]) == normalize_gpu_uuid(uuid):
                return d
        except ValueError:
            continue
    return None


def check_nccl(torch: Any, machine: Machine, quick: bool, timeout_s: float) -> CheckResult:
    """All-reduce and one DDP step across every visible GPU through torchrun, with bus bandwidth."""
    import torch.distributed as dist

    count = torch.cuda.device_count()
    if count < 2:
        return CheckResult("nccl", "SKIP", f"NCCL all-reduce needs 2 or more GPUs; this workspace sees {count}")
    if not dist.is_available() or not dist.is_nccl_available():
        return CheckResult(
            "nccl",
            "FAIL",
            "this PyTorch has no NCCL backend",
            "install a CUDA build of PyTorch from PyPI (it ships NCCL)",
        )
    uuids = visible_uuids_from_torch(torch)
    nvml = [_nvml_device(machine, u) for u in uuids]
    links = [d["nvlinks"] for d in nvml if d]
    if links and min(links) > 0:
        link, link_text = "nvlink", f"NVLink ({min(links)} active links per GPU)"
    elif links:
        link, link_text = "pcie", "PCIe (no active NVLink)"
    else:
        link, link_text = "pcie", "unknown (NVML did not say; judged as PCIe)"
    sizes_mb = [1, 16, 64] if quick else [1, 16, 256]
    with tempfile.TemporaryDirectory(prefix="labgpu-doctor-") as tmp:
        out_path = os.path.join(tmp, "nccl.json")
        command = nccl_launch_command(sys.executable, count, out_path, sizes_mb, 10 if quick else 20)
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env.setdefault("NCCL_DEBUG", "INFO")  # its 'via P2P/...' lines name the transport
        env.setdefault("OMP_NUM_THREADS", "1")
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return CheckResult(
                "nccl",
                "FAIL",
                f"all-reduce across {count} GPUs did not finish in {timeout_s:g} s (hung)",
                "NCCL hangs usually mean blocked peer-to-peer: retry with "
                "NCCL_P2P_DISABLE=1; if that works, tell your admin (IOMMU/ACS settings)",
            )
        log = done.stdout + done.stderr
        if done.returncode != 0 or not os.path.exists(out_path):
            tail = " | ".join(line.strip() for line in log.strip().splitlines()[-4:])
            return CheckResult(
                "nccl",
                "FAIL",
                f"torchrun with {count} processes exited {done.returncode}: {tail}",
                "run `NCCL_DEBUG=INFO python -m labgpu.doctor` and read NCCL's "
                "messages; /dev/shm that is too small breaks NCCL too (see shm)",
            )
        with open(out_path) as f:
            report = json.load(f)
    report["transports"] = nccl_transports(log)
    return judge_nccl(report, link, link_text)


# ---------------------------------------------------------------------------------------------
# Running the checks, and the command line.
# ---------------------------------------------------------------------------------------------


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labgpu-doctor",
        description="Check this workspace: driver vs CUDA, torch.cuda, assigned GPUs, autograd, "
        "matmul throughput, copy bandwidth, /dev/shm and NCCL. Exit 0 when nothing fails.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions and smaller NCCL messages (about half the time)"
    )
    parser.add_argument("--skip-nccl", action="store_true", help="skip the multi-GPU NCCL check")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="DataLoader workers to check /dev/shm for (default: usable CPUs, at most 8)",
    )
    parser.add_argument(
        "--nccl-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up on the NCCL check after this long (default 300)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """`labgpu-doctor [--json] [--quick] [--skip-nccl]`: run the checks, print, exit 0 unless one FAILs."""
    args = build_parser().parse_args(argv)
    if args.workers is not None and args.workers < 1:
        print("labgpu-doctor: --workers must be >= 1", file=sys.stderr)
        return 2
    started = time.perf_counter()
    results, found = run_checks(args.quick, args.skip_nccl, args.workers, args.nccl_timeout)
    if args.json:
        document = {
            "doctor": "labgpu-doctor",
            "ok": exit_code(results) == 0,
            "summary": summarize(results),
            "seconds": round(time.perf_counter() - started, 2),
            "machine": found,
            "checks": [r.to_json() for r in results],
        }
        print(json.dumps(document, indent=2, default=str))
    else:
        print(render_text(results, found))
    return exit_code(results)
