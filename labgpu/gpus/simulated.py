"""Simulated GPUs: an inventory made from a preset such as ``4xH100`` or
``2xA100-NVLink+2xL4``, for the demo and the tests on machines without GPUs.

Everything downstream (allocation, the queue, fair share, reclamation, accounting, sessions)
runs on these exactly as on real GPUs; only the container gets no device request (there is
nothing to attach) and every name says "(simulated)". The hub allows this source only in demo
mode and in tests: production mode refuses it at start.

Preset grammar: terms joined by ``+``; each term is ``[COUNT x]MODEL[-NVLink]``. GPUs of one
``-NVLink`` term reach each other over NVLink; each term sits under its own PCIe switch. UUIDs
are stable for a preset (derived from the term and the position), so a restarted demo hub
finds its allocations again.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from labgpu.gpus.inventory import Gpu, InventoryError
from labgpu.gpus.telemetry import GpuReading, ProcessReading

SIMULATED_SUFFIX = " (simulated)"
_NAMESPACE = uuid.UUID("6f1c7d2e-8a4b-4c3e-9d55-1abc0de51a7e")


@dataclass(frozen=True)
class SimulatedModel:
    """A GPU model the simulator knows: its NVML name and memory."""

    name: str
    memory_gib: int


MODELS: dict[str, SimulatedModel] = {
    "H200": SimulatedModel("NVIDIA H200", 141),
    "H100": SimulatedModel("NVIDIA H100 80GB HBM3", 80),
    "A100": SimulatedModel("NVIDIA A100-SXM4-80GB", 80),
    "A100-40G": SimulatedModel("NVIDIA A100-SXM4-40GB", 40),
    "L40S": SimulatedModel("NVIDIA L40S", 48),
    "L4": SimulatedModel("NVIDIA L4", 24),
    "RTX6000": SimulatedModel("NVIDIA RTX 6000 Ada Generation", 48),
}
MAX_SIMULATED_GPUS = 64

_TERM = re.compile(r"^(?:(?P<count>[0-9]{1,3})\s*[xX×]\s*)?(?P<model>[A-Za-z0-9]+(?:-40G)?)(?P<nvlink>-NVLink)?$", re.I)


def is_simulated(gpu: Gpu) -> bool:
    """True for a GPU made by this module (its model name says so)."""
    return gpu.model.endswith(SIMULATED_SUFFIX)


def simulated_gpus(preset: str) -> list[Gpu]:
    """The GPUs a preset describes, indexed from 0 in the order written.

    >>> [g.model for g in simulated_gpus("2xL4")]
    ['NVIDIA L4 (simulated)', 'NVIDIA L4 (simulated)']
    """
    terms = [t.strip() for t in preset.split("+")]
    if not preset.strip() or any(not t for t in terms):
        raise InventoryError(_preset_error(preset, "it is empty or has an empty term"))
    gpus: list[Gpu] = []
    for position, term in enumerate(terms):
        match = _TERM.match(term)
        if not match:
            raise InventoryError(_preset_error(preset, f"{term!r} is not COUNTxMODEL[-NVLink]"))
        key = _model_key(match.group("model"))
        if key is None:
            raise InventoryError(_preset_error(preset, f"unknown model {match.group('model')!r}"))
        count = int(match.group("count") or 1)
        if count < 1:
            raise InventoryError(_preset_error(preset, f"{term!r} asks for no GPU"))
        model = MODELS[key]
        uuids = [f"GPU-{uuid.uuid5(_NAMESPACE, f'{position}:{term.lower()}:{i}')}" for i in range(count)]
        nvlink = bool(match.group("nvlink"))
        for i, gpu_uuid in enumerate(uuids):
            index = len(gpus)
            gpus.append(
                Gpu(
                    uuid=gpu_uuid,
                    index=index,
                    model=model.name + SIMULATED_SUFFIX,
                    memory_total=model.memory_gib * 1024**3,
                    pci_bus_id=f"00000000:{0x10 + index:02X}:00.0",
                    numa_node=0,
                    switch_group=f"sim-switch-{position}",
                    nvlink_peers=frozenset(u for j, u in enumerate(uuids) if j != i) if nvlink else frozenset(),
                )
            )
        if len(gpus) > MAX_SIMULATED_GPUS:
            raise InventoryError(_preset_error(preset, f"more than {MAX_SIMULATED_GPUS} GPUs"))
    return gpus


class SimulatedInventory:
    """An inventory source of simulated GPUs (``LABGPU_GPU_SOURCE=simulated:4xH100``)."""

    simulated = True

    def __init__(self, preset: str):
        self.preset = preset
        self._gpus = simulated_gpus(preset)

    def gpus(self) -> list[Gpu]:
        return list(self._gpus)


def _model_key(text: str) -> str | None:
    wanted = text.upper()
    return next((key for key in MODELS if key.upper() == wanted), None)


def _preset_error(preset: str, why: str) -> str:
    known = ", ".join(MODELS)
    return (
        f"simulated GPU preset {preset!r}: {why}. Write terms like 4xH100 or 2xA100-NVLink+2xL4 "
        f"(models: {known}; at most {MAX_SIMULATED_GPUS} GPUs)"
    )


# --------------------------------------------------------------------------------------------
# Telemetry of simulated GPUs: busy while a marked process of the holding workspace runs
# --------------------------------------------------------------------------------------------

BUSY_ENV = "LABGPU_SIM_BUSY"  # a process started with LABGPU_SIM_BUSY=1 keeps its GPUs "busy"
BUSY_UTILIZATION = 97  # what a busy simulated GPU reports (an H100 under a matmul loop: 97-99 %)
BUSY_MEMORY_MIB = 1024  # GPU memory each marked process "uses"


class SimulatedTelemetrySource:
    """The poller's source for simulated GPUs, with the real NVML source's interface.

    ``busy_pids`` returns, per GPU UUID, the host PIDs of the marked processes in the workspace
    that holds it (:func:`labgpu.services.simulated_load.marked_pids_by_gpu` reads them from
    the real /proc of the real containers). A GPU with such a process reads as busy, and the
    process is listed on it, so the poller attributes it to its user through /proc/PID/cgroup
    exactly as with NVML; every other GPU reads idle. Nothing is random: tests and the demo see
    the reclaimer act on what they did.
    """

    def __init__(self, gpus: list[Gpu], busy_pids: Callable[[], Mapping[str, Sequence[int]]]) -> None:
        self.gpus = [g for g in gpus if not g.mig_enabled]
        self.busy_pids = busy_pids

    def read(self) -> list[GpuReading]:
        busy = self.busy_pids()
        readings = []
        for gpu in self.gpus:
            pids = sorted(set(busy.get(gpu.uuid, ())))
            total_mib = gpu.memory_total // 1024**2
            used_mib = min(total_mib, BUSY_MEMORY_MIB * len(pids))
            readings.append(
                GpuReading(
                    uuid=gpu.uuid,
                    index=gpu.index,
                    name=gpu.model,
                    memory_total_mib=total_mib,
                    utilization_gpu=BUSY_UTILIZATION if pids else 0,
                    utilization_memory=40 if pids else 0,
                    memory_used_mib=used_mib,
                    temperature_c=71 if pids else 34,
                    power_w=550.0 if pids else 70.0,
                    throttle_reasons=0,
                    ecc_uncorrected=0,
                    remap_pending=False,
                    processes=tuple(
                        ProcessReading(pid, BUSY_MEMORY_MIB, BUSY_UTILIZATION // len(pids), 40 // len(pids))
                        for pid in pids
                    ),
                )
            )
        return readings

    def close(self) -> None:
        pass
