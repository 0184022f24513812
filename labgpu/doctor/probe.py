"""What labgpu-doctor reads from the machine before any check runs: LABGPU_GPUS, the driver
(NVML, else /proc/driver/nvidia/version), the GPUs NVML sees, /dev/shm and the usable CPUs.

No PyTorch here; NVML (``pynvml``) is imported only when :func:`probe_nvml` runs, so the doctor
starts, and says what is missing, on a machine with neither. The parsers of what is read
(``parse_assigned_gpus``, ``parse_proc_driver_version``, ``cpus_from_cgroup``) are pure.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labgpu.doctor.verdicts import cuda_version_text, normalize_gpu_uuid


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


def parse_proc_driver_version(text: str) -> str | None:
    """The driver version from /proc/driver/nvidia/version ('NVRM version: NVIDIA UNIX x86_64
    Kernel Module  580.65.06  Sun Jul 27 ...'), or None."""
    match = re.search(r"NVRM version:.*?\s(\d+\.\d+(?:\.\d+)?)\s", text + " ")
    return match.group(1) if match else None


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
    simulated: bool = False  # LABGPU_GPUS_SIMULATED=1: the hub's GPUs are simulated (demo, tests)

    @property
    def gpu_expected(self) -> bool:
        """Whether this machine should have a usable GPU (simulated GPUs have no device)."""
        if self.simulated and not self.nvml_devices and not self.device_nodes:
            return False
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


def probe_machine(environ: Mapping[str, str] | None = None) -> Machine:
    """Read LABGPU_GPUS (from ``environ``, default this process's), the driver (NVML, else /proc)
    and the GPUs NVML sees."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    assigned: list[str] | None = None
    assigned_error = None
    if "LABGPU_GPUS" in env:
        try:
            assigned = parse_assigned_gpus(env["LABGPU_GPUS"])
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
        assigned,
        assigned_error,
        driver,
        source,
        driver_cuda,
        devices,
        nvml_error,
        Path("/dev/nvidiactl").exists(),
        simulated=env.get("LABGPU_GPUS_SIMULATED") == "1",
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
