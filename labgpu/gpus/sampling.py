"""Where GPU telemetry comes from: NVML on this host, or a trace recorded on a real GPU and
replayed through the same interface, so tests and benchmarks run the real poller without one.

Beside :mod:`labgpu.gpus.inventory` (what GPUs there are), this reads what they are doing each
tick (:class:`labgpu.gpus.telemetry.GpuReading`). NVML is imported only inside
:class:`NvmlTelemetrySource`; :class:`RecordingSource` turns a real run into a trace.
"""

from __future__ import annotations

import ctypes
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from labgpu.gpus.telemetry import GpuReading, ProcessReading

MIN_INTERVAL_S = 1.0  # NVML takes a driver lock on every call: sampling faster slows everything
DEFAULT_INTERVAL_S = 5.0
SLOW_EVERY_TICKS = 12  # ECC, row remapping, clock event reasons: once a minute at the 5 s default


class TelemetrySource(Protocol):
    """Where readings come from: real NVML, or a recorded trace replayed through the same calls."""

    def read(self) -> list[GpuReading]:
        """One reading per GPU, in index order; a failing GPU gives a reading with ``error``."""
        ...

    def close(self) -> None: ...


class NvmlTelemetrySource:
    """Reads every GPU through NVML (nvidia-ml-py), as cheaply as the figures allow.

    Handles are fetched once, because re-fetching them each tick is what made gpustat burn CPU.
    Utilization, memory, the process list, temperature and power cost about 20 us per GPU
    together and are read every tick. Two things are not (measured on an H200, driver 580):

    - ``nvmlDeviceGetProcessUtilization`` costs ~2.7 ms per GPU, a hundred times the rest, so it
      is asked only where it tells us something: on a GPU with more than one process. An
      exclusively held GPU's utilization is its one process's (that process's ``sm_util`` is
      the device's), and :func:`labgpu.gpus.telemetry.busy_shares` gives it the whole busy
      time either way, so usage and fair share see the same figures.
    - ECC errors, row remapping (retired pages on older parts) and clock event reasons change
      rarely and only feed health checks, so they are read every ``slow_every`` ticks and the
      last values are reported in between.

    Energy counters and ``nvmlDeviceGetSamples`` (~3 ms each) are never called.
    """

    def __init__(self, slow_every: int = SLOW_EVERY_TICKS, clock: Callable[[], float] = time.time) -> None:
        import pynvml  # only here: the rest of the poller runs without NVML

        if slow_every < 1:
            raise ValueError(f"slow_every must be >= 1 tick (got {slow_every})")
        self._nvml = pynvml
        self.slow_every = slow_every
        self._clock = clock
        pynvml.nvmlInit()
        self._devices: list[tuple[int, Any, str, str]] = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            name = _text(pynvml.nvmlDeviceGetName(handle))
            self._devices.append((index, handle, uuid, name))
        # Per GPU, the newest per-process sample seen (NVML timestamps, microseconds since the
        # epoch), so each call returns only samples newer than the previous tick's.
        self._last_seen_us: dict[str, int] = {uuid: 0 for _, _, uuid, _ in self._devices}
        self._slow: dict[str, tuple[int | None, int | None, bool | None]] = {}
        self._processes = process_list_reader(pynvml)
        self._ticks = 0
        # Renamed from "throttle reasons" to "clock event reasons" in newer nvidia-ml-py.
        self._clock_event_reasons = (
            getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
            or pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
        )

    def read(self) -> list[GpuReading]:
        slow_due = self._ticks % self.slow_every == 0
        self._ticks += 1
        now_us = int(self._clock() * 1_000_000)
        readings = []
        for index, handle, uuid, name in self._devices:
            try:
                readings.append(self._read_device(index, handle, uuid, name, slow_due, now_us))
            except self._nvml.NVMLError as error:
                # One GPU failing (fallen off the bus, XID) must not stop the others; its slow
                # fields are read afresh once it answers again.
                self._slow.pop(uuid, None)
                readings.append(GpuReading(uuid=uuid, index=index, name=name, error=str(error)))
        return readings

    def wants_process_utilization(self, process_count: int) -> bool:
        """Whether per-process utilization says more than the device's: only when processes
        share the GPU (a benchmark overrides this to measure the always-asking baseline)."""
        return process_count > 1

    def _read_device(self, index: int, handle: Any, uuid: str, name: str, slow_due: bool, now_us: int) -> GpuReading:
        nv = self._nvml
        utilization = nv.nvmlDeviceGetUtilizationRates(handle)
        memory = nv.nvmlDeviceGetMemoryInfo(handle)
        processes = self._processes(handle)
        if self.wants_process_utilization(len(processes)):
            util_by_pid = self._process_utilization(handle, uuid)
        else:
            # The one process's utilization is the device's. Skip the samples of this tick, so
            # that a later shared tick asks only for what came after it.
            self._last_seen_us[uuid] = max(self._last_seen_us[uuid], now_us)
            util_by_pid = {pid: (int(utilization.gpu), int(utilization.memory)) for pid in processes}
        if slow_due or uuid not in self._slow:
            self._slow[uuid] = (
                self._optional(self._clock_event_reasons, handle),
                self._optional(
                    nv.nvmlDeviceGetTotalEccErrors,
                    handle,
                    nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                    nv.NVML_VOLATILE_ECC,
                ),
                self._remap_pending(handle),
            )
        throttle_reasons, ecc_uncorrected, remap_pending = self._slow[uuid]
        return GpuReading(
            uuid=uuid,
            index=index,
            name=name,
            memory_total_mib=_mib(memory.total),
            utilization_gpu=int(utilization.gpu),
            utilization_memory=int(utilization.memory),
            memory_used_mib=_mib(memory.used),
            temperature_c=self._optional(nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU),
            power_w=_watts(self._optional(nv.nvmlDeviceGetPowerUsage, handle)),
            throttle_reasons=throttle_reasons,
            ecc_uncorrected=ecc_uncorrected,
            remap_pending=remap_pending,
            processes=tuple(
                ProcessReading(
                    pid=pid,
                    used_memory_mib=used,
                    sm_util=util_by_pid.get(pid, (None, None))[0],
                    mem_util=util_by_pid.get(pid, (None, None))[1],
                )
                for pid, used in sorted(processes.items())
            ),
        )

    def _process_utilization(self, handle: Any, uuid: str) -> dict[int, tuple[int, int]]:
        """Per-PID (smUtil, memUtil) sampled since the last call; NVML raises NotFound when no
        process ran a kernel since then (an idle GPU), which is no error."""
        nv = self._nvml
        try:
            samples = nv.nvmlDeviceGetProcessUtilization(handle, self._last_seen_us[uuid])
        except nv.NVMLError as error:
            if isinstance(error, (nv.NVMLError_GpuIsLost, nv.NVMLError_Unknown)):
                raise
            return {}
        by_pid: dict[int, tuple[int, int]] = {}
        for sample in samples:
            self._last_seen_us[uuid] = max(self._last_seen_us[uuid], int(sample.timeStamp))
            sm, mem = by_pid.get(sample.pid, (0, 0))
            by_pid[sample.pid] = (max(sm, int(sample.smUtil)), max(mem, int(sample.memUtil)))
        return by_pid

    def _remap_pending(self, handle: Any) -> bool | None:
        nv = self._nvml
        remapped = self._optional(nv.nvmlDeviceGetRemappedRows, handle)
        if remapped is not None:  # (correctable, uncorrectable, pending, failure)
            return bool(remapped[2] or remapped[3])
        pending = self._optional(nv.nvmlDeviceGetRetiredPagesPendingStatus, handle)
        return None if pending is None else bool(pending)

    def _optional(self, call: Callable[..., Any], *args: Any) -> Any:
        """A figure not every GPU reports (NotSupported, NoPermission) is None; a lost GPU
        still raises, so the whole reading becomes an error."""
        nv = self._nvml
        try:
            return call(*args)
        except (nv.NVMLError_GpuIsLost, nv.NVMLError_Unknown):
            raise
        except nv.NVMLError:
            return None

    def close(self) -> None:
        self._nvml.nvmlShutdown()


class _ProcessList:
    """``nvmlDeviceGetComputeRunningProcesses_v3`` called once per GPU per tick, into a buffer
    kept between ticks. nvidia-ml-py's wrapper calls it twice (for the count, then the list)
    and turns each entry into a dict; under a virtualized driver each call is a slow ioctl."""

    def __init__(self, nvml: Any, capacity: int = 64) -> None:
        self._nvml = nvml
        self._fn = nvml._nvmlGetFunctionPointer("nvmlDeviceGetComputeRunningProcesses_v3")
        self._struct = nvml.c_nvmlProcessInfo_v3_t
        self._not_available = nvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value
        self._count = ctypes.c_uint(0)
        self._resize(capacity)

    def _resize(self, capacity: int) -> None:
        self._capacity = capacity
        self._buffer = (self._struct * capacity)()

    def __call__(self, handle: Any) -> dict[int, int | None]:
        nv = self._nvml
        while True:
            self._count.value = self._capacity
            result = self._fn(handle, ctypes.byref(self._count), self._buffer)
            if result == nv.NVML_SUCCESS:
                break
            if result == nv.NVML_ERROR_INSUFFICIENT_SIZE and self._capacity < MAX_PROCESSES_PER_GPU:
                self._resize(min(MAX_PROCESSES_PER_GPU, max(2 * self._capacity, 2 * self._count.value)))
                continue
            raise nv.NVMLError(result)
        na = self._not_available
        return {
            p.pid: None if p.usedGpuMemory == na else int(p.usedGpuMemory) // (1024 * 1024)
            for p in self._buffer[: self._count.value]
        }


MAX_PROCESSES_PER_GPU = 4096


def process_list_reader(nvml: Any) -> Callable[[Any], dict[int, int | None]]:
    """PID -> used MiB of a GPU's compute processes: one NVML call (:class:`_ProcessList`), or
    nvidia-ml-py's own wrapper where this NVML or nvidia-ml-py lacks what that needs."""
    try:
        return _ProcessList(nvml)
    except Exception:  # an old driver (no _v3) or a different nvidia-ml-py: the public call
        return lambda handle: {p.pid: _mib(p.usedGpuMemory) for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)}


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _mib(value: int | None) -> int | None:
    return None if value is None else int(value) // (1024 * 1024)


def _watts(milliwatts: int | None) -> float | None:
    return None if milliwatts is None else milliwatts / 1000.0


TRACE_FORMAT = "labgpu-nvml-trace/1"


class ReplayTelemetrySource:
    """Replays a trace recorded on a real GPU (tests/data/nvml-*.json), one recorded tick per
    :meth:`read`, so tests and benchmarks run the real poller without a GPU. With ``loop`` the
    trace starts over at its end; without it, reading past the end raises EOFError."""

    def __init__(self, path: str | os.PathLike[str], loop: bool = True) -> None:
        self.path = Path(path)
        trace = load_trace(self.path)
        self.recorded_on: Mapping[str, Any] = trace["recorded"]
        self.interval_s: float = float(trace.get("interval_s", DEFAULT_INTERVAL_S))
        self.ticks: list[list[GpuReading]] = [
            [GpuReading.from_json(g) for g in tick["gpus"]] for tick in trace["ticks"]
        ]
        # Seconds since the recording started, per tick: replaying at these offsets
        # reproduces the recorded timing.
        self.offsets_s: list[float] = [
            float(tick.get("t", i * self.interval_s)) for i, tick in enumerate(trace["ticks"])
        ]
        if not self.ticks:
            raise ValueError(f"{self.path}: the trace has no ticks; record one with benchmarks/gpu_poller_check.py")
        self.loop = loop
        self.position = 0

    def read(self) -> list[GpuReading]:
        if self.position >= len(self.ticks):
            if not self.loop:
                raise EOFError(f"{self.path}: trace ended after {len(self.ticks)} ticks")
            self.position = 0
        tick = self.ticks[self.position]
        self.position += 1
        return tick

    def close(self) -> None:
        pass


def load_trace(path: Path) -> dict[str, Any]:
    """Read a recorded trace, saying which file and what is wrong when it is not one."""
    try:
        trace = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the NVML trace: {error}") from None
    if not isinstance(trace, dict) or trace.get("format") != TRACE_FORMAT:
        raise ValueError(f'{path}: not an NVML trace (expected "format": "{TRACE_FORMAT}")')
    return trace


class RecordingSource:
    """Wraps a source and keeps every tick it returns, so a real GPU run also yields a trace."""

    def __init__(self, inner: TelemetrySource) -> None:
        self.inner = inner
        self.ticks: list[tuple[float, list[GpuReading]]] = []
        self._started = time.monotonic()

    def read(self) -> list[GpuReading]:
        readings = self.inner.read()
        self.ticks.append((time.monotonic() - self._started, readings))
        return readings

    def close(self) -> None:
        self.inner.close()

    def trace(self, recorded: Mapping[str, Any], interval_s: float) -> dict[str, Any]:
        return {
            "format": TRACE_FORMAT,
            "recorded": dict(recorded),
            "interval_s": interval_s,
            "ticks": [{"t": round(t, 3), "gpus": [g.to_json() for g in readings]} for t, readings in self.ticks],
        }
