"""labgpu-doctor's verdicts: pure decisions on plain numbers and strings, one per check
(``judge_driver``, ``judge_visible_devices``, ``judge_matmul``, ``judge_shm``, ``judge_nccl``, ...)
and the tables they judge against (minimum drivers, data-sheet peaks, PCIe rates).

Nothing here touches the machine: :mod:`labgpu.doctor.probe` and :mod:`labgpu.doctor.measure`
gather the figures, these functions turn them into a PASS/WARN/FAIL/SKIP with the reason and the
fix, so every threshold is unit-tested without a GPU.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["PASS", "WARN", "FAIL", "SKIP"]
STATUSES: tuple[Status, ...] = ("PASS", "WARN", "FAIL", "SKIP")
# How bad each status is, to name the worst of several GPUs.
STATUS_ORDER: dict[str, int] = {"PASS": 0, "SKIP": 1, "WARN": 2, "FAIL": 3}

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


def visible_matches_assigned(visible: Sequence[str], assigned: Sequence[str]) -> bool:
    """True when the GPUs this process sees are exactly the assigned ones (order ignored)."""
    return sorted(map(normalize_gpu_uuid, visible)) == sorted(map(normalize_gpu_uuid, assigned))


def judge_simulated(assigned: Sequence[str] | None, visible_devices: str | None) -> CheckResult:
    """A workspace on simulated GPUs (LABGPU_GPUS_SIMULATED=1, the demo and tests): no device
    to check, but the environment must name exactly the granted GPUs."""
    name = "simulated"
    granted = list(assigned or [])
    listed = [u.strip() for u in (visible_devices or "").split(",") if u.strip()]
    figures = {"assigned": granted, "nvidia_visible_devices": listed}
    if not granted:
        return CheckResult(
            name,
            "FAIL",
            "LABGPU_GPUS_SIMULATED is set but LABGPU_GPUS names no GPU",
            "restart your server from the hub",
            figures,
        )
    if listed != granted:
        return CheckResult(
            name,
            "FAIL",
            f"NVIDIA_VISIBLE_DEVICES ({', '.join(listed) or 'unset'}) does not match the grant "
            f"LABGPU_GPUS ({', '.join(granted)})",
            "restart your server from the hub; if it persists, tell your admin",
            figures,
        )
    return CheckResult(
        name,
        "PASS",
        f"this hub's GPUs are SIMULATED (demo): {len(granted)} granted ({', '.join(granted)}); the environment "
        "matches the grant. There is no device: GPU checks are skipped",
        figures=figures,
    )


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
