"""The exposition: one :class:`Snapshot` of the hub (plain data) -> Prometheus metric families.

Pure (prometheus_client's metric families are plain objects), so what a scrape shows is tested
without a database or a server. Two sets of series:

- per GPU, dcgm-exporter's names, units and labels (``gpu``, ``UUID``, ``device``,
  ``modelName``, ``Hostname``, ``pci_bus_id``), so dashboards made for dcgm-exporter work, plus
  who holds the GPU (``labgpu_user``, ``labgpu_server``, ``labgpu_group``, as dcgm-exporter adds
  ``hpc_job``): ``DCGM_FI_DEV_GPU_UTIL`` (%), ``DCGM_FI_DEV_MEM_COPY_UTIL`` (%),
  ``DCGM_FI_DEV_FB_USED`` / ``DCGM_FI_DEV_FB_FREE`` (MiB), ``DCGM_FI_DEV_GPU_TEMP`` (C),
  ``DCGM_FI_DEV_POWER_USAGE`` (W), ``DCGM_FI_DEV_ECC_DBE_VOL_TOTAL`` (uncorrectable ECC errors),
  only while the poller's latest sample is fresh; and ``labgpu_gpu_allocated`` /
  ``labgpu_gpu_healthy`` always, from the ledger;
- LabGPU's own ``labgpu_*`` series: the machine, the queue, allocations and refusals, the
  reclaimer, usage counters per user and group, fair-share factors, the poller, reconcile drift.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

GPU_LABELS = ("gpu", "UUID", "device", "modelName", "Hostname", "pci_bus_id")
HOLDER_LABELS = ("labgpu_user", "labgpu_server", "labgpu_group")


@dataclass(frozen=True)
class GpuSample:
    """The poller's latest figures for one GPU (None: NVML gave none)."""

    utilization_gpu: int | None = None
    utilization_memory: int | None = None
    memory_used_mib: int | None = None
    memory_total_mib: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    ecc_uncorrected: int | None = None


@dataclass(frozen=True)
class GpuState:
    """One whole GPU: identity, holder(s) ("" = free), health, and its fresh sample if any."""

    index: int
    uuid: str
    model: str
    pci_bus_id: str = ""
    user: str = ""
    server: str = ""
    group: str = ""
    healthy: bool = True
    sample: GpuSample | None = None


@dataclass(frozen=True)
class Histogram:
    """A cumulative histogram: (le, count) pairs ending with +Inf, and the sum of observations."""

    buckets: Sequence[tuple[str, float]]
    sum: float


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape shows; ``now`` and times are epoch seconds."""

    hostname: str
    now: float
    gpus: Sequence[GpuState] = ()
    queue_waiting: Sequence[tuple[str, int, float]] = ()  # (group, GPUs asked, submitted at)
    queue_wait: Histogram = field(default_factory=lambda: Histogram((("+Inf", 0.0),), 0.0))
    queue_exits: Mapping[str, int] = field(default_factory=dict)  # granted / cancelled / abandoned
    allocation_events: Mapping[str, int] = field(default_factory=dict)  # grant / adopt / release
    refusals: Mapping[str, int] = field(default_factory=dict)  # JupyterHub's reason
    reclaim_warnings: Mapping[str, int] = field(default_factory=dict)  # idle / max_runtime
    reclaims: Mapping[str, int] = field(default_factory=dict)
    held_seconds: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (user, group)
    busy_seconds: Mapping[tuple[str, str], float] = field(default_factory=dict)
    fairshare: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (user, group) -> factor
    last_sample: float | None = None  # the poller's newest sample, None if never
    drift: Mapping[str, int] = field(default_factory=dict)  # adopted / released / stopped / conflict / skipped
    last_reconcile: float | None = None
    last_drift: Mapping[str, int] = field(default_factory=dict)  # what the last reconcile found
    previous_scrape_seconds: float | None = None


DRIFT_KINDS = ("adopted", "released", "stopped", "conflict", "skipped")
QUEUE_EXITS = ("granted", "cancelled", "abandoned")
ALLOCATION_EVENTS = ("grant", "adopt", "release")
RECLAIM_REASONS = ("idle", "max_runtime")


class Family:
    """One metric family as plain data: its series as (label values, value) pairs, the way
    prometheus_client's ``*MetricFamily`` are filled (``add_metric``) but without a Sample
    object and a label dict per series; :meth:`to_metric` gives prometheus_client's family
    (for a Collector), :func:`exposition_text` the text."""

    def __init__(self, name: str, documentation: str, kind: str, labels: Sequence[str] = ()) -> None:
        self.name, self.documentation, self.type = name, documentation, kind
        self.labels = tuple(labels)
        self.series: list[tuple[Sequence[str], float]] = []
        self.buckets: list[tuple[str, float]] = []  # a histogram's cumulative (le, count)
        self.sum = 0.0

    @classmethod
    def gauge(cls, name: str, documentation: str, labels: Sequence[str] = (), value: float | None = None) -> Family:
        family = cls(name, documentation, "gauge", labels)
        if value is not None:
            family.add_metric((), value)
        return family

    @classmethod
    def counter(cls, name: str, documentation: str, labels: Sequence[str] = ()) -> Family:
        return cls(name, documentation, "counter", labels)

    @classmethod
    def histogram(cls, name: str, documentation: str, buckets: Sequence[tuple[str, float]], sum_value: float) -> Family:
        family = cls(name, documentation, "histogram")
        family.buckets, family.sum = list(buckets), sum_value
        return family

    def add_metric(self, values: Sequence[str], value: float) -> None:
        self.series.append((values, float(value)))

    def to_metric(self) -> Metric:
        """The same family as prometheus_client's object."""
        if self.type == "histogram":
            return HistogramMetricFamily(self.name, self.documentation, buckets=self.buckets, sum_value=self.sum)
        make = GaugeMetricFamily if self.type == "gauge" else CounterMetricFamily
        if not self.labels:
            return make(self.name, self.documentation, value=self.series[0][1])
        family = make(self.name, self.documentation, labels=list(self.labels))
        for values, value in self.series:
            family.add_metric(list(values), value)
        return family


# dcgm-exporter's name, help and how to read it from a sample.
_DCGM: tuple[tuple[str, str, Callable[[GpuSample], float | None]], ...] = (
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", lambda s: s.utilization_gpu),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", lambda s: s.utilization_memory),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", lambda s: s.memory_used_mib),
    (
        "DCGM_FI_DEV_FB_FREE",
        "Framebuffer memory free (in MiB).",
        lambda s: (
            None
            if s.memory_total_mib is None or s.memory_used_mib is None
            else max(0, s.memory_total_mib - s.memory_used_mib)
        ),
    ),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", lambda s: s.temperature_c),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", lambda s: s.power_w),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Total number of double-bit volatile ECC errors.", lambda s: s.ecc_uncorrected),
)


def _gpu_labels(gpu: GpuState, hostname: str) -> list[str]:
    return [str(gpu.index), gpu.uuid, f"nvidia{gpu.index}", gpu.model, hostname, gpu.pci_bus_id]


def gpu_families(snapshot: Snapshot) -> Iterator[Family]:
    labels = [*GPU_LABELS, *HOLDER_LABELS]
    for name, help_text, read in _DCGM:
        family = Family.gauge(name, help_text, labels=labels)
        for gpu in snapshot.gpus:
            value = read(gpu.sample) if gpu.sample is not None else None
            if value is not None:
                family.add_metric([*_gpu_labels(gpu, snapshot.hostname), gpu.user, gpu.server, gpu.group], value)
        yield family
    allocated = Family.gauge(
        "labgpu_gpu_allocated",
        "1 while the ledger gives this GPU to a server (who: the labgpu_* labels).",
        labels=labels,
    )
    healthy = Family.gauge(
        "labgpu_gpu_healthy", "1 if the GPU may be handed out; 0 after an NVML error, ECC errors, ...", labels=labels
    )
    for gpu in snapshot.gpus:
        values = [*_gpu_labels(gpu, snapshot.hostname), gpu.user, gpu.server, gpu.group]
        allocated.add_metric(values, 1.0 if gpu.user else 0.0)
        healthy.add_metric(values, 1.0 if gpu.healthy else 0.0)
    yield allocated
    yield healthy


def machine_families(snapshot: Snapshot) -> Iterator[Family]:
    total = Family.gauge("labgpu_gpus", "GPUs this hub schedules, by state.", labels=["state"])
    states = {"free": 0, "allocated": 0, "unhealthy": 0}
    for gpu in snapshot.gpus:
        states["allocated" if gpu.user else "unhealthy" if not gpu.healthy else "free"] += 1
    for state, n in states.items():
        total.add_metric([state], n)
    yield total
    by_group = Family.gauge(
        "labgpu_gpus_allocated", "GPUs held, by the group they are charged to ('' = none).", labels=["labgpu_group"]
    )
    groups: dict[str, int] = {}
    for gpu in snapshot.gpus:
        if gpu.user:
            groups[gpu.group] = groups.get(gpu.group, 0) + 1
    for group, n in sorted(groups.items()):
        by_group.add_metric([group], n)
    yield by_group


def queue_families(snapshot: Snapshot) -> Iterator[Family]:
    length = Family.gauge("labgpu_queue_length", "Spawns waiting in the GPU queue.", labels=["labgpu_group"])
    gpus = Family.gauge("labgpu_queue_gpus_requested", "GPUs the waiting spawns ask for.", labels=["labgpu_group"])
    per_group: dict[str, tuple[int, int]] = {"": (0, 0)}
    for group, asked, _ in snapshot.queue_waiting:
        n, g = per_group.get(group, (0, 0))
        per_group[group] = (n + 1, g + asked)
    for group, (n, g) in sorted(per_group.items()):
        length.add_metric([group], n)
        gpus.add_metric([group], g)
    yield length
    yield gpus
    oldest = min((submitted for _, _, submitted in snapshot.queue_waiting), default=None)
    yield Family.gauge(
        "labgpu_queue_oldest_wait_seconds",
        "How long the longest-waiting spawn has waited (0: nobody waits).",
        value=0.0 if oldest is None else max(0.0, snapshot.now - oldest),
    )
    yield Family.histogram(
        "labgpu_queue_wait_seconds",
        "How long spawns that got their GPUs waited in the queue.",
        buckets=list(snapshot.queue_wait.buckets),
        sum_value=snapshot.queue_wait.sum,
    )
    yield _counter(
        "labgpu_queue_exits",
        "Spawns that left the GPU queue, by outcome.",
        "outcome",
        QUEUE_EXITS,
        snapshot.queue_exits,
    )


def event_families(snapshot: Snapshot) -> Iterator[Family]:
    yield _counter(
        "labgpu_allocation_events",
        "Ledger events: GPUs granted to a spawn, adopted from a running container at reconcile, released.",
        "action",
        ALLOCATION_EVENTS,
        snapshot.allocation_events,
    )
    yield _counter(
        "labgpu_spawn_refusals",
        "Spawns the hub refused, by reason (quota: over a limit; capacity: no GPU free, no queue, or queue timeout).",
        "reason",
        ("quota", "capacity"),
        snapshot.refusals,
    )
    yield _counter(
        "labgpu_reclaim_warnings",
        "Owners warned that their GPUs will be reclaimed.",
        "reason",
        RECLAIM_REASONS,
        snapshot.reclaim_warnings,
    )
    yield _counter(
        "labgpu_reclaims", "Servers stopped to reclaim their GPUs.", "reason", RECLAIM_REASONS, snapshot.reclaims
    )
    yield _counter(
        "labgpu_ledger_drift",
        "What reconciling the ledger with Docker found and repaired (at hub start).",
        "kind",
        DRIFT_KINDS,
        snapshot.drift,
    )
    if snapshot.last_reconcile is not None:
        yield Family.gauge(
            "labgpu_reconcile_last_timestamp_seconds",
            "When the ledger was last reconciled with Docker (at hub start).",
            value=snapshot.last_reconcile,
        )
        last = Family.gauge(
            "labgpu_ledger_drift_last_reconcile",
            "What the last reconcile of the ledger with Docker found, by kind.",
            labels=["kind"],
        )
        for kind in sorted(set(DRIFT_KINDS) | set(snapshot.last_drift)):
            last.add_metric([kind], float(snapshot.last_drift.get(kind, 0)))
        yield last


def usage_families(snapshot: Snapshot) -> Iterator[Family]:
    for name, help_text, values in (
        ("labgpu_gpu_held_seconds", "GPU-seconds held (allocated), per user and charged group.", snapshot.held_seconds),
        ("labgpu_gpu_busy_seconds", "GPU-seconds busy (kernels running), per user and group.", snapshot.busy_seconds),
    ):
        family = Family.counter(name, help_text, labels=["labgpu_user", "labgpu_group"])
        for (user, group), seconds in sorted(values.items()):
            family.add_metric([user, group], seconds)
        yield family
    factor = Family.gauge(
        "labgpu_fairshare_factor",
        "Fair-share factor 2^(-usage/share): 1 = no recent use, 0.5 = exactly one's share, toward 0 above it.",
        labels=["labgpu_user", "labgpu_group"],
    )
    for (user, group), value in sorted(snapshot.fairshare.items()):
        factor.add_metric([user, group], value)
    yield factor


def poller_families(snapshot: Snapshot) -> Iterator[Family]:
    if snapshot.last_sample is not None:
        yield Family.gauge(
            "labgpu_poller_last_sample_timestamp_seconds",
            "When the telemetry poller last sampled the GPUs.",
            value=snapshot.last_sample,
        )
    if snapshot.gpus:
        age = math.inf if snapshot.last_sample is None else max(0.0, snapshot.now - snapshot.last_sample)
        yield Family.gauge(
            "labgpu_poller_last_sample_age_seconds",
            "Seconds since the telemetry poller's last sample (+Inf: it never sampled).",
            value=age,
        )
    if snapshot.previous_scrape_seconds is not None:
        yield Family.gauge(
            "labgpu_metrics_previous_scrape_seconds",
            "How long the exporter's previous scrape took to read the database.",
            value=snapshot.previous_scrape_seconds,
        )


def build_families(snapshot: Snapshot) -> list[Family]:
    """Every family of one scrape, in a stable order."""
    return [
        *gpu_families(snapshot),
        *machine_families(snapshot),
        *queue_families(snapshot),
        *event_families(snapshot),
        *usage_families(snapshot),
        *poller_families(snapshot),
    ]


def _counter(name: str, help_text: str, label: str, known: Sequence[str], counts: Mapping[str, int]) -> Family:
    """A counter with one label, every known value present from the start (0), so that rate()
    and increase() see the first event."""
    family = Family.counter(name, help_text, labels=[label])
    for value in sorted(set(known) | set(counts)):
        family.add_metric([value], float(counts.get(value, 0)))
    return family


def _number(value: float) -> str:
    """A sample's value as Go writes it (prometheus_client's own function)."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def exposition_text(families: Iterable[Family]) -> bytes:
    """Prometheus' text format (0.0.4) of these families, byte for byte what prometheus_client's
    ``generate_latest`` writes for their :meth:`Family.to_metric` (a unit test holds it to that).
    ``generate_latest`` builds a label dict per series and validates every label name again:
    with 500 users, half a scrape; here each family's label names are sorted once."""
    out: list[str] = []
    for family in families:
        name = family.name + "_total" if family.type == "counter" else family.name
        doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {family.type}\n")
        if family.type == "histogram":
            for le, count in family.buckets:
                out.append(f'{name}_bucket{{le="{le}"}} {_number(count)}\n')
            out.append(f"{name}_count {_number(family.buckets[-1][1])}\n{name}_sum {_number(family.sum)}\n")
            continue
        order = sorted(range(len(family.labels)), key=lambda i: family.labels[i])
        for values, value in family.series:
            if values:
                text = ",".join([f'{family.labels[i]}="{_label_value(values[i])}"' for i in order])
                out.append(f"{name}{{{text}}} {_number(value)}\n")
            else:
                out.append(f"{name} {_number(value)}\n")
    return "".join(out).encode("utf-8")
