"""The GPU telemetry poller: NVML (or a recorded trace) -> per-GPU and per-process readings ->
the container and user behind each process -> the ledger, with per-minute and per-hour rollups.

Like jupyterhub-idle-culler, the whole service reads top to bottom: readings and sources,
attribution, pure rollup arithmetic, then the :class:`Poller` loop. The loop runs in its own
process (``labgpu poller``); if it dies, spawning goes on with the last data. NVML is imported
only inside :class:`NvmlTelemetrySource`, and the database only through the store it is handed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from labgpu.labels import LABEL_SERVER, LABEL_USER  # the labels the spawner writes

log = logging.getLogger("labgpu.services.telemetry")

MIN_INTERVAL_S = 1.0
DEFAULT_INTERVAL_S = 5.0
MINUTE = 60
HOUR = 3600
DAY_S = 24 * HOUR


# --------------------------------------------------------------------------------------------
# Readings: what one tick of a telemetry source says about each GPU
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessReading:
    """One compute process on a GPU: host PID, its GPU memory and, when NVML sampled it, its
    SM and memory-controller utilization (percent) since the previous tick."""

    pid: int
    used_memory_mib: int | None = None
    sm_util: int | None = None
    mem_util: int | None = None


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one tick. ``error`` is set (and the figures may be None) when NVML failed on
    this GPU: the poller then marks it unhealthy so the allocator stops handing it out."""

    uuid: str
    index: int
    name: str = ""
    memory_total_mib: int | None = None
    error: str | None = None
    utilization_gpu: int | None = None
    utilization_memory: int | None = None
    memory_used_mib: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    throttle_reasons: int | None = None
    ecc_uncorrected: int | None = None  # volatile uncorrectable ECC errors since driver load
    remap_pending: bool | None = None  # row remapping (H100) or retired pages pending a reset
    processes: tuple[ProcessReading, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GpuReading:
        fields = dict(data)
        fields["processes"] = tuple(ProcessReading(**p) for p in fields.get("processes", ()))
        return cls(**fields)


def health_problem(reading: GpuReading) -> str | None:
    """Why this GPU should not be handed out, or None when it looks healthy. NVML errors,
    uncorrectable ECC errors and pending row remaps all need an admin (usually a GPU reset)."""
    if reading.error:
        return f"NVML error on GPU {reading.index} ({reading.uuid}): {reading.error}"
    if reading.ecc_uncorrected:
        return (
            f"GPU {reading.index} ({reading.uuid}) reports {reading.ecc_uncorrected} uncorrectable "
            "ECC errors since the driver loaded: drain it and reset it (nvidia-smi -r)"
        )
    if reading.remap_pending:
        return (
            f"GPU {reading.index} ({reading.uuid}) has memory row remapping pending: reset it when idle (nvidia-smi -r)"
        )
    return None


class TelemetrySource(Protocol):
    """Where readings come from: real NVML, or a recorded trace replayed through the same calls."""

    def read(self) -> list[GpuReading]:
        """One reading per GPU, in index order; a failing GPU gives a reading with ``error``."""
        ...

    def close(self) -> None: ...


class NvmlTelemetrySource:
    """Reads every GPU through NVML (nvidia-ml-py). Handles are fetched once here, because
    re-fetching them each tick is what made gpustat burn CPU; per-process utilization keeps
    each GPU's ``lastSeenTimeStamp`` so every tick sees only new samples."""

    def __init__(self) -> None:
        import pynvml  # only here: the rest of the poller runs without NVML

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._devices: list[tuple[int, Any, str, str]] = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            name = _text(pynvml.nvmlDeviceGetName(handle))
            self._devices.append((index, handle, uuid, name))
        self._last_seen_us: dict[str, int] = {uuid: 0 for _, _, uuid, _ in self._devices}
        # Renamed from "throttle reasons" to "clock event reasons" in newer nvidia-ml-py.
        self._clock_event_reasons = (
            getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
            or pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
        )

    def read(self) -> list[GpuReading]:
        readings = []
        for index, handle, uuid, name in self._devices:
            try:
                readings.append(self._read_device(index, handle, uuid, name))
            except self._nvml.NVMLError as error:
                # One GPU failing (fallen off the bus, XID) must not stop the others.
                readings.append(GpuReading(uuid=uuid, index=index, name=name, error=str(error)))
        return readings

    def _read_device(self, index: int, handle: Any, uuid: str, name: str) -> GpuReading:
        nv = self._nvml
        utilization = nv.nvmlDeviceGetUtilizationRates(handle)
        memory = nv.nvmlDeviceGetMemoryInfo(handle)
        processes = {p.pid: _mib(p.usedGpuMemory) for p in nv.nvmlDeviceGetComputeRunningProcesses(handle)}
        sm_by_pid = self._process_utilization(handle, uuid)
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
            throttle_reasons=self._optional(self._clock_event_reasons, handle),
            ecc_uncorrected=self._optional(
                nv.nvmlDeviceGetTotalEccErrors,
                handle,
                nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                nv.NVML_VOLATILE_ECC,
            ),
            remap_pending=self._remap_pending(handle),
            processes=tuple(
                ProcessReading(
                    pid=pid,
                    used_memory_mib=used,
                    sm_util=sm_by_pid.get(pid, (None, None))[0],
                    mem_util=sm_by_pid.get(pid, (None, None))[1],
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


# --------------------------------------------------------------------------------------------
# Attribution: host PID -> /proc/PID/cgroup -> container id -> labels -> user and server
# --------------------------------------------------------------------------------------------

# cgroup v1: ".../docker/<64 hex>"; cgroup v2 (systemd driver): ".../docker-<64 hex>.scope".
_CONTAINER_ID = re.compile(r"(?:/docker/|/docker-)([0-9a-f]{64})(?:\.scope)?(?=/|$)", re.MULTILINE)

WORKSPACE = "workspace"  # one of our containers: user and server known
CONTAINER = "container"  # some other container (not ours, or its labels could not be read)
HOST = "host"  # a process outside any container
GONE = "gone"  # the process exited before we could look (or /proc is not the host's)


@dataclass(frozen=True)
class Owner:
    """Who a GPU process belongs to. Processes outside our containers are recorded too: they
    still occupy the GPU, and an admin wants to see them."""

    kind: str
    container_id: str = ""
    user: str = ""
    server: str = ""


def container_id_from_cgroup(cgroup_text: str) -> str | None:
    """The Docker container id in a /proc/PID/cgroup file (v1 or v2 layout), or None."""
    match = _CONTAINER_ID.search(cgroup_text)
    return match.group(1) if match else None


LabelLookup = Callable[[str], "Mapping[str, str] | None"]
"""Container id -> its labels, or None when no such container exists (the lead's is Docker)."""


class ProcessAttributor:
    """Maps host PIDs to owners. ``proc_root`` is the host's /proc (the poller needs host PID
    access), or a synthetic tree in tests; container labels are cached, since they never change
    for the life of a container, and a failed lookup is retried on the next tick."""

    def __init__(
        self, label_lookup: LabelLookup | None, proc_root: str | os.PathLike[str] = "/proc", cache_size: int = 4096
    ) -> None:
        self.label_lookup = label_lookup
        self.proc_root = Path(proc_root)
        self.cache_size = cache_size
        self._owners_by_container: OrderedDict[str, Owner] = OrderedDict()
        self._failing: set[str] = set()  # containers whose labels could not be read (logged once)

    def owner_of(self, pid: int) -> Owner:
        try:
            cgroup_text = (self.proc_root / str(pid) / "cgroup").read_text()
        except OSError:
            return Owner(GONE)
        container_id = container_id_from_cgroup(cgroup_text)
        if container_id is None:
            return Owner(HOST)
        cached = self._owners_by_container.get(container_id)
        if cached is not None:
            return cached
        if self.label_lookup is None:
            return Owner(CONTAINER, container_id)
        try:
            labels = self.label_lookup(container_id)
        except Exception as error:  # Docker down: record the container id, ask again next tick
            if container_id not in self._failing:
                log.warning(
                    "Cannot read the labels of container %s (%s); recording its id and retrying each tick",
                    container_id[:12],
                    error,
                )
                self._failing.add(container_id)
            return Owner(CONTAINER, container_id)
        self._failing.discard(container_id)
        labels = labels or {}
        if LABEL_USER in labels:
            owner = Owner(WORKSPACE, container_id, labels[LABEL_USER], labels.get(LABEL_SERVER, ""))
        else:
            owner = Owner(CONTAINER, container_id)
        self._owners_by_container[container_id] = owner
        if len(self._owners_by_container) > self.cache_size:
            self._owners_by_container.popitem(last=False)
        return owner


# --------------------------------------------------------------------------------------------
# Samples and rollups: pure arithmetic, composable from minutes into hours
# --------------------------------------------------------------------------------------------


class GpuSample(NamedTuple):
    """One stored per-GPU sample. ``dt_s`` is the time it stands for (since the previous tick,
    capped), so seconds and busy-seconds add up exactly whatever the interval was."""

    gpu: Hashable
    ts: float
    dt_s: float
    utilization_gpu: int | None
    memory_used_mib: int | None
    temperature_c: int | None
    power_w: float | None
    healthy: bool


class OwnerSample(NamedTuple):
    """One stored per-process sample: the owner's share of the GPU's busy time (``busy``, 0..1)."""

    gpu: Hashable
    owner: Hashable
    ts: float
    dt_s: float
    busy: float
    memory_used_mib: int | None


@dataclass
class GpuRollup:
    """Sums over one bucket for one GPU; busy fraction = busy_s / seconds."""

    bucket: int
    gpu: Hashable
    samples: int = 0
    seconds: float = 0.0
    busy_s: float = 0.0
    util_max: int = 0
    memory_used_max_mib: int = 0
    memory_mib_s: float = 0.0
    temperature_max_c: int = 0
    energy_j: float = 0.0
    unhealthy_s: float = 0.0


@dataclass
class OwnerRollup:
    """Sums over one bucket for one owner on one GPU: GPU-seconds in use and busy."""

    bucket: int
    gpu: Hashable
    owner: Hashable
    samples: int = 0
    seconds: float = 0.0
    busy_s: float = 0.0
    memory_used_max_mib: int = 0


def bucket_start(ts: float, bucket_s: int) -> int:
    return int(ts // bucket_s) * bucket_s


def rollup_gpu_samples(samples: Iterable[GpuSample], bucket_s: int) -> list[GpuRollup]:
    """Raw per-GPU samples -> one rollup per (bucket, GPU)."""
    rollups: dict[tuple[int, Hashable], GpuRollup] = {}
    for s in samples:
        key = (bucket_start(s.ts, bucket_s), s.gpu)
        r = rollups.get(key) or rollups.setdefault(key, GpuRollup(*key))
        util = s.utilization_gpu or 0
        memory = s.memory_used_mib or 0
        r.samples += 1
        r.seconds += s.dt_s
        r.busy_s += s.dt_s * util / 100.0
        r.util_max = max(r.util_max, util)
        r.memory_used_max_mib = max(r.memory_used_max_mib, memory)
        r.memory_mib_s += s.dt_s * memory
        r.temperature_max_c = max(r.temperature_max_c, s.temperature_c or 0)
        r.energy_j += s.dt_s * (s.power_w or 0.0)
        r.unhealthy_s += 0.0 if s.healthy else s.dt_s
    return sorted(rollups.values(), key=lambda r: (r.bucket, str(r.gpu)))


def rollup_owner_samples(samples: Iterable[OwnerSample], bucket_s: int) -> list[OwnerRollup]:
    """Raw per-process samples -> one rollup per (bucket, GPU, owner); several processes of one
    owner on one GPU at one tick count that GPU-second once, and their busy shares add up."""
    per_tick: dict[tuple[Hashable, Hashable, float], list[OwnerSample]] = {}
    for s in samples:
        per_tick.setdefault((s.gpu, s.owner, s.ts), []).append(s)
    rollups: dict[tuple[int, Hashable, Hashable], OwnerRollup] = {}
    for (gpu, owner, ts), group in per_tick.items():
        key = (bucket_start(ts, bucket_s), gpu, owner)
        r = rollups.get(key) or rollups.setdefault(key, OwnerRollup(*key))
        dt = max(s.dt_s for s in group)
        r.samples += 1
        r.seconds += dt
        r.busy_s += dt * min(1.0, sum(s.busy for s in group))
        r.memory_used_max_mib = max(r.memory_used_max_mib, sum(s.memory_used_mib or 0 for s in group))
    return sorted(rollups.values(), key=lambda r: (r.bucket, str(r.gpu), str(r.owner)))


def merge_gpu_rollups(rollups: Iterable[GpuRollup], bucket_s: int) -> list[GpuRollup]:
    """Finer rollups (minutes) -> coarser ones (hours); equal to rolling the raw samples up."""
    merged: dict[tuple[int, Hashable], GpuRollup] = {}
    for r in rollups:
        key = (bucket_start(r.bucket, bucket_s), r.gpu)
        m = merged.get(key) or merged.setdefault(key, GpuRollup(*key))
        m.samples += r.samples
        m.seconds += r.seconds
        m.busy_s += r.busy_s
        m.util_max = max(m.util_max, r.util_max)
        m.memory_used_max_mib = max(m.memory_used_max_mib, r.memory_used_max_mib)
        m.memory_mib_s += r.memory_mib_s
        m.temperature_max_c = max(m.temperature_max_c, r.temperature_max_c)
        m.energy_j += r.energy_j
        m.unhealthy_s += r.unhealthy_s
    return sorted(merged.values(), key=lambda r: (r.bucket, str(r.gpu)))


def merge_owner_rollups(rollups: Iterable[OwnerRollup], bucket_s: int) -> list[OwnerRollup]:
    merged: dict[tuple[int, Hashable, Hashable], OwnerRollup] = {}
    for r in rollups:
        key = (bucket_start(r.bucket, bucket_s), r.gpu, r.owner)
        m = merged.get(key) or merged.setdefault(key, OwnerRollup(*key))
        m.samples += r.samples
        m.seconds += r.seconds
        m.busy_s += r.busy_s
        m.memory_used_max_mib = max(m.memory_used_max_mib, r.memory_used_max_mib)
    return sorted(merged.values(), key=lambda r: (r.bucket, str(r.gpu), str(r.owner)))


def busy_shares(reading: GpuReading) -> dict[int, float]:
    """Each process's share of the GPU's busy time this tick (0..1 of the whole GPU): the
    device utilization split by the processes' SM utilization, or evenly when NVML gave none."""
    if not reading.processes:
        return {}
    device_busy = (reading.utilization_gpu or 0) / 100.0
    weights = {p.pid: float(p.sm_util or 0) for p in reading.processes}
    total = sum(weights.values())
    if total <= 0:
        return {pid: device_busy / len(weights) for pid in weights}
    return {pid: device_busy * w / total for pid, w in weights.items()}


@dataclass(frozen=True)
class Retention:
    """How long each resolution is kept, in seconds; None keeps it forever."""

    raw_s: float | None = 48 * HOUR
    minute_s: float | None = 30 * 24 * HOUR
    hour_s: float | None = None


# --------------------------------------------------------------------------------------------
# The poller loop
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessRecord:
    """A process reading with its owner and busy share, ready for the store."""

    gpu_uuid: str
    pid: int
    owner: Owner
    used_memory_mib: int | None
    sm_util: int | None
    busy: float


class TelemetryStore(Protocol):
    """What the poller needs from the ledger (labgpu.db.telemetry_store.TelemetryDB provides it)."""

    def write_tick(
        self, ts: float, gpus: Sequence[tuple[GpuReading, float, str | None]], processes: Sequence[ProcessRecord]
    ) -> None: ...

    def roll_up(self, now: float) -> None: ...

    def prune(self, now: float, retention: Retention) -> None: ...


@dataclass
class TickReport:
    """What one tick did and cost: CPU seconds in the source (NVML's own time) and in total."""

    ts: float
    gpus: int
    processes: int
    unhealthy: list[str] = field(default_factory=list)
    source_cpu_s: float = 0.0
    total_cpu_s: float = 0.0

    @property
    def poller_cpu_s(self) -> float:
        """CPU time on top of the source: attribution, arithmetic and the database write."""
        return self.total_cpu_s - self.source_cpu_s


class Poller:
    """Every tick: read all GPUs, attribute processes, write one transaction, and once a minute
    roll up and prune. A GPU that errors is recorded unhealthy; the others go on."""

    def __init__(
        self,
        source: TelemetrySource,
        store: TelemetryStore,
        attributor: ProcessAttributor,
        interval_s: float = DEFAULT_INTERVAL_S,
        retention: Retention = Retention(),
        on_health_change: Callable[[str, str | None], Any] | None = None,
    ) -> None:
        """``on_health_change(uuid, problem_or_None)`` is called the first time this process
        sees each GPU (clearing what an earlier run left) and whenever one turns unhealthy or
        recovers; ``labgpu poller`` wires it to :meth:`labgpu.db.ledger.Ledger.set_gpu_health`."""
        if interval_s < MIN_INTERVAL_S:
            raise ValueError(
                f"--interval must be >= {MIN_INTERVAL_S:g} s (got {interval_s:g}): NVML takes a driver lock"
            )
        self.source = source
        self.store = store
        self.attributor = attributor
        self.interval_s = interval_s
        self.retention = retention
        self.on_health_change = on_health_change
        self._last_ts: dict[str, float] = {}
        self._last_minute: int | None = None
        self._problems: dict[str, str] = {}
        self._health_reported: set[str] = set()  # GPUs whose current health the hook has taken

    def tick(self, now: float) -> TickReport:
        cpu_start = time.process_time()
        readings = self.source.read()
        cpu_source = time.process_time()
        gpus: list[tuple[GpuReading, float, str | None]] = []
        processes: list[ProcessRecord] = []
        report = TickReport(ts=now, gpus=len(readings), processes=0)
        for reading in readings:
            last = self._last_ts.get(reading.uuid)
            # A gap (poller down) is not counted as seconds observed: cap each sample at 2 ticks.
            dt = self.interval_s if last is None else min(max(now - last, 0.0), 2 * self.interval_s)
            self._last_ts[reading.uuid] = now
            problem = health_problem(reading)
            self._log_health_change(reading.uuid, problem)
            if problem:
                report.unhealthy.append(reading.uuid)
            gpus.append((reading, dt, problem))
            shares = busy_shares(reading)
            for p in reading.processes:
                owner = self.attributor.owner_of(p.pid)
                processes.append(ProcessRecord(reading.uuid, p.pid, owner, p.used_memory_mib, p.sm_util, shares[p.pid]))
        report.processes = len(processes)
        self.store.write_tick(now, gpus, processes)
        minute = bucket_start(now, MINUTE)
        if minute != self._last_minute:
            self._last_minute = minute
            self.store.roll_up(now)
            self.store.prune(now, self.retention)
        report.source_cpu_s = cpu_source - cpu_start
        report.total_cpu_s = time.process_time() - cpu_start
        return report

    def _log_health_change(self, uuid: str, problem: str | None) -> None:
        previous = self._problems.get(uuid)
        if problem and problem != previous:
            log.error("%s; the allocator will not hand this GPU out until it recovers", problem)
            self._problems[uuid] = problem
            self._health_reported.discard(uuid)
        elif not problem and previous:
            log.warning("GPU %s is healthy again", uuid)
            del self._problems[uuid]
            self._health_reported.discard(uuid)
        if self.on_health_change is None or uuid in self._health_reported:
            return
        try:
            self.on_health_change(uuid, problem)
        except Exception:  # the ledger being busy must not stop the telemetry
            log.exception("Could not record the health of GPU %s in the ledger; will retry", uuid)
        else:
            self._health_reported.add(uuid)

    def run(self, stop: threading.Event | None = None, clock: Callable[[], float] = time.time) -> None:
        """Tick every ``interval_s`` until ``stop`` is set; a slow tick delays, never stacks."""
        stop = stop or threading.Event()
        next_tick = time.monotonic()
        while not stop.is_set():
            try:
                self.tick(clock())
            except Exception:  # a failed write (disk full, locked) must not end the service
                log.exception("Telemetry tick failed; retrying at the next tick")
            next_tick += self.interval_s
            delay = next_tick - time.monotonic()
            if delay < 0:
                next_tick = time.monotonic()
                delay = 0
            stop.wait(delay)


def open_with_backoff(
    open_source: Callable[[], TelemetrySource],
    stop: threading.Event | None = None,
    first_delay_s: float = 1.0,
    max_delay_s: float = 60.0,
    sleep: Callable[[float], Any] | None = None,
    remind_every_s: float = 3600.0,
) -> TelemetrySource | None:
    """Open the source, retrying with doubling delays (NVML not loaded yet at boot, driver being
    upgraded, or a host without NVIDIA driver) until it opens; None if ``stop`` was set.

    The process never exits for this (a managed service that exits is restarted at once: a
    crash loop), and it stays quiet: one error line saying what to check, the same again only
    when the error changes, and a reminder every ``remind_every_s`` while it keeps failing.
    """
    stop = stop or threading.Event()
    wait = sleep or stop.wait
    delay = first_delay_s
    attempt = 1
    last_error = ""
    waited_s = since_reminder_s = 0.0
    while not stop.is_set():
        try:
            source = open_source()
        except Exception as error:
            text = str(error) or type(error).__name__
            if text != last_error:
                log.error(
                    "Cannot start GPU telemetry: %s. Is the NVIDIA driver loaded and is libnvidia-ml.so "
                    "visible to the poller? Retrying with growing delays (up to %.0f s); spawning goes on "
                    "meanwhile, without GPU health or usage data.",
                    text,
                    max_delay_s,
                )
                last_error, since_reminder_s = text, 0.0
            elif since_reminder_s >= remind_every_s:
                log.warning(
                    "Still cannot start GPU telemetry after %d attempts over %.0f s: %s", attempt, waited_s, text
                )
                since_reminder_s = 0.0
            else:
                log.debug("GPU telemetry attempt %d failed: %s; next in %.0f s", attempt, text, delay)
            wait(delay)
            waited_s += delay
            since_reminder_s += delay
            delay = min(delay * 2, max_delay_s)
            attempt += 1
            continue
        if attempt > 1:
            log.warning("GPU telemetry started after %d attempts", attempt)
        return source
    return None


def ticks(poller: Poller, count: int, start: float, step_s: float | None = None) -> Iterator[TickReport]:
    """Run ``count`` ticks on a simulated clock (tests and benchmarks: a day in seconds)."""
    step = poller.interval_s if step_s is None else step_s
    for i in range(count):
        yield poller.tick(start + i * step)
