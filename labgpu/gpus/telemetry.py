"""GPU telemetry as plain data: what one tick reads from each GPU, who owns each process, the
samples the poller stores and the rollups they add up to, and the store protocol in between.

Shared by the poller (:mod:`labgpu.services.poller`, which produces these) and the telemetry
store (:mod:`labgpu.db.telemetry_store`, which keeps them), so neither imports the other. Pure:
no NVML, Docker or SQLAlchemy here; the rollup arithmetic composes minutes into hours exactly.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Protocol, Self

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


def busy_shares(reading: GpuReading) -> dict[int, float]:
    """Each process's share of the GPU's busy time this tick (0..1 of the whole GPU): the
    device utilization split by the processes' SM utilization, or evenly when NVML gave none."""
    if not reading.processes:
        return {}
    device_busy = (reading.utilization_gpu or 0) / 100.0
    if len(reading.processes) == 1:  # an exclusive GPU's busy time is its one process's
        return {reading.processes[0].pid: device_busy}
    weights = {p.pid: float(p.sm_util or 0) for p in reading.processes}
    total = sum(weights.values())
    if total <= 0:
        return {pid: device_busy / len(weights) for pid in weights}
    return {pid: device_busy * w / total for pid, w in weights.items()}


# --------------------------------------------------------------------------------------------
# Owners: who a GPU process belongs to (labgpu.services.attribution finds out)
# --------------------------------------------------------------------------------------------

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


@dataclass(frozen=True)
class ProcessRecord:
    """A process reading with its owner and busy share, ready for the store."""

    gpu_uuid: str
    pid: int
    owner: Owner
    used_memory_mib: int | None
    sm_util: int | None
    busy: float


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


@dataclass(kw_only=True)
class BucketSums:
    """What every rollup adds up over its bucket: samples, seconds covered, busy seconds and the
    memory peak. Keyword-only, so each rollup's own key (bucket, GPU, owner) comes first."""

    samples: int = 0
    seconds: float = 0.0
    busy_s: float = 0.0
    memory_used_max_mib: int = 0

    def add(self, finer: Self) -> None:
        """Add a finer rollup of the same key into this one (minutes into their hour)."""
        self.samples += finer.samples
        self.seconds += finer.seconds
        self.busy_s += finer.busy_s
        self.memory_used_max_mib = max(self.memory_used_max_mib, finer.memory_used_max_mib)


@dataclass
class GpuRollup(BucketSums):
    """Sums over one bucket for one GPU; busy fraction = busy_s / seconds."""

    bucket: int
    gpu: Hashable
    util_max: int = 0
    memory_mib_s: float = 0.0
    temperature_max_c: int = 0
    energy_j: float = 0.0
    unhealthy_s: float = 0.0

    def add(self, finer: Self) -> None:
        super().add(finer)
        self.util_max = max(self.util_max, finer.util_max)
        self.memory_mib_s += finer.memory_mib_s
        self.temperature_max_c = max(self.temperature_max_c, finer.temperature_max_c)
        self.energy_j += finer.energy_j
        self.unhealthy_s += finer.unhealthy_s


@dataclass
class OwnerRollup(BucketSums):
    """Sums over one bucket for one owner on one GPU: GPU-seconds in use and busy."""

    bucket: int
    gpu: Hashable
    owner: Hashable


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
        (merged.get(key) or merged.setdefault(key, GpuRollup(*key))).add(r)
    return sorted(merged.values(), key=lambda r: (r.bucket, str(r.gpu)))


def merge_owner_rollups(rollups: Iterable[OwnerRollup], bucket_s: int) -> list[OwnerRollup]:
    merged: dict[tuple[int, Hashable, Hashable], OwnerRollup] = {}
    for r in rollups:
        key = (bucket_start(r.bucket, bucket_s), r.gpu, r.owner)
        (merged.get(key) or merged.setdefault(key, OwnerRollup(*key))).add(r)
    return sorted(merged.values(), key=lambda r: (r.bucket, str(r.gpu), str(r.owner)))


# --------------------------------------------------------------------------------------------
# What the poller writes through: the store protocol and how long the store keeps each resolution
# --------------------------------------------------------------------------------------------


# One tick as the poller hands it to the store: when, each GPU's reading with the seconds it
# stands for and its health problem (None: healthy), and the attributed processes.
Tick = tuple[float, Sequence[tuple[GpuReading, float, str | None]], Sequence[ProcessRecord]]


@dataclass(frozen=True)
class Retention:
    """How long each resolution is kept, in seconds; None keeps it forever."""

    raw_s: float | None = 48 * HOUR
    minute_s: float | None = 30 * 24 * HOUR
    hour_s: float | None = None


class TelemetryStore(Protocol):
    """What the poller needs from the database (:class:`labgpu.db.telemetry_store.TelemetryDB`
    provides it); a test can hand the poller anything that has these three methods."""

    def write_ticks(self, ticks: Sequence[Tick]) -> None:
        """Several ticks' samples (oldest first) in one transaction, and each GPU's health."""
        ...

    def roll_up(self, now: float) -> None: ...

    def prune(self, now: float, retention: Retention) -> None: ...
