"""The checks that measure with PyTorch: CUDA availability, the visible GPUs, autograd, matmul
throughput and correctness, pinned copy bandwidth, and NCCL all-reduce through torchrun.

PyTorch is imported once, lazily (:func:`import_torch`), and passed in as ``torch``: this module
imports on a machine without it. Each check measures, then hands plain figures to its verdict in
:mod:`labgpu.doctor.verdicts`.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from labgpu.doctor.probe import Machine
from labgpu.doctor.verdicts import (
    GIB,
    MIB,
    CheckResult,
    Status,
    cudnn_version_text,
    judge_autograd,
    judge_copy_bandwidth,
    judge_matmul,
    judge_nccl,
    normalize_gpu_uuid,
    pcie_link_gbps,
)


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
    if machine.simulated and not machine.gpu_expected:
        return CheckResult(name, "SKIP", "this hub's GPUs are simulated (demo): there is no device to use")
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
        seconds = statistics.median(time_per_call(torch, partial(torch.matmul, a, b, out=c), device, repeats, inner))
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
    h2d = statistics.median(time_per_call(torch, partial(dev.copy_, host, non_blocking=True), device, repeats, 2))
    d2h = statistics.median(time_per_call(torch, partial(host.copy_, dev, non_blocking=True), device, repeats, 2))
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


def nccl_transports(log: str) -> list[str]:
    """The transports NCCL chose, from its NCCL_DEBUG=INFO lines ('... via P2P/CUMEM/read')."""
    found = re.findall(r"\bvia (\S+)", log)
    return sorted(set(found))
