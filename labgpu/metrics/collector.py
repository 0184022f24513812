"""The exporter: a prometheus_client collector that reads the ledger's database at each scrape.

:class:`LedgerCollector` gathers a :class:`labgpu.metrics.series.Snapshot` from the ledger (who
holds which GPU), the telemetry (each GPU's latest sample, busy seconds), the queue, the
reclaimer's notices and the hub's events, through :class:`labgpu.db.metrics_store.MetricsReader`;
the counters grow from what was recorded since the previous scrape
(:mod:`labgpu.metrics.accounting`). :func:`render` gives the text a scrape returns. Blocking
(database reads): a tornado handler calls it in an executor.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from labgpu.db.hub_events import HubEventStore
from labgpu.db.ledger import Ledger
from labgpu.db.metrics_store import GpuTelemetry, MetricsReader, ReclaimCounts
from labgpu.fairshare.scheduler import fairshare_factors
from labgpu.gpus.allocator import Allocation
from labgpu.gpus.inventory import Gpu
from labgpu.hub.gpu_queue import DEFAULT_HALF_LIFE, PolicyView
from labgpu.metrics.accounting import BusyAccount, EventAccount, HeldAccount, QueueAccount
from labgpu.metrics.series import GpuSample, GpuState, Histogram, Snapshot, build_families, exposition_text
from labgpu.quota import Policy

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_STALE_AFTER = 120.0  # seconds: an older sample is not shown as the GPU's current figures
DEFAULT_SLOW_EVERY = 30.0  # seconds between reads of what changes at most once a reclaimer round


class LedgerCollector(Collector):
    """LabGPU's series, read from the ledger's database at each scrape.

    ``policy`` gives the quota policy in force (shares, groups, the fair-share half-life; None:
    everyone has a share of 1); ``hostname`` is the ``Hostname`` label of the GPU series
    (dcgm-exporter's); a GPU sample older than ``stale_after`` seconds is not shown. Reclaim
    counts are read every ``slow_every`` seconds (whole-table counts; the reclaimer acts once a
    minute), fair-share factors computed as often (usage decays over days), the ledger's GPUs
    read when an audit row came or as often; the rest at every scrape.
    """

    def __init__(
        self,
        url_or_path: str | Path,
        *,
        policy: Callable[[], Policy | None] = lambda: None,
        hostname: str | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
        slow_every: float = DEFAULT_SLOW_EVERY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = Ledger(url_or_path, migrate=False)
        self.reader = MetricsReader(self.ledger.url)
        self.events = HubEventStore(self.ledger.url, migrate=False)
        self.policy = policy
        self.hostname = hostname or socket.gethostname()
        self.stale_after = stale_after
        self.slow_every = slow_every
        self.clock = clock
        self._lock = threading.Lock()  # scrapes may overlap; the accounts are not thread-safe
        self._held: HeldAccount | None = None
        self._busy = BusyAccount()
        self._queue = QueueAccount()
        self._previous_scrape: float | None = None
        self._view: PolicyView | None = None
        self._newest_tick = 0.0
        self._inventory: tuple[float, list[Gpu]] | None = None
        self._allocations: tuple[int, list[Allocation]] | None = None
        self._events = EventAccount()
        self._reclaims: tuple[float, ReclaimCounts] | None = None
        self._factors: tuple[float, PolicyView, dict[str, float]] | None = None

    def close(self) -> None:
        for store in (self.events, self.reader, self.ledger):
            store.close()

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's Collector interface (a registry can hold this collector)."""
        for family in build_families(self.snapshot()):
            yield family.to_metric()

    def snapshot(self) -> Snapshot:
        """Read the database and bring the counters up to date; one scrape's figures."""
        with self._lock:
            started = time.perf_counter()
            snapshot = self._snapshot()
            self._previous_scrape = time.perf_counter() - started
            return snapshot

    def _snapshot(self) -> Snapshot:
        now = self.clock()
        policy = self.policy()
        if self._view is None or self._view.policy is not policy:
            self._view = PolicyView(policy)  # per policy: it caches each user's resolved limits
        view = self._view
        half_life = view.half_life() if policy is not None else DEFAULT_HALF_LIFE
        if self._held is None or self._held.half_life != half_life:
            self._held = HeldAccount(half_life)  # a new half-life: decay everything again
        held = self._held
        held.add(self.reader.audit_after(held.last_id))
        if not self._busy.started:
            self._busy.add(*self.reader.busy_history())
        else:
            self._busy.add(*self.reader.busy_since(self._busy.watermark_ms))
        self._queue.add(self.reader.queue_rows(self._queue.last_id, self._queue.waiting_ids))
        self._events.add(self.events.after(self._events.last_id))

        def group_of(user: str) -> str:
            return held.last_group.get(user) or view.group(user) or ""

        # The poller samples every GPU at each tick: read from the previous scrape's newest tick on.
        samples = self.reader.latest_samples(max(now - self.stale_after, self._newest_tick))
        last_sample = max((s.ts for s in samples.values()), default=None)
        self._newest_tick = last_sample or self._newest_tick
        unhealthy = self.reader.unhealthy_gpus()
        if self._inventory is None or now - self._inventory[0] > self.slow_every:
            self._inventory = (now, [h.gpu for h in self.ledger.holdings()])  # changes when the hub starts
        if self._allocations is None or self._allocations[0] != held.last_id:
            self._allocations = (held.last_id, self.ledger.allocations())  # changes with an audit row
        gpus = gpu_states(self._inventory[1], self._allocations[1], samples, unhealthy)
        if last_sample is None and gpus:
            last_sample = self.reader.last_sample_time()
        waiting = self.reader.waiting()
        if self._factors is None or now - self._factors[0] > self.slow_every or view is not self._factors[1]:
            # Usage decays over days (the policy's half-life): a factor 30 s old is still right.
            usage = held.usage(now)
            users = sorted(set(usage) | set(self._busy.busy_s) | {e.user for e in waiting})
            self._factors = (now, view, fairshare_factors(usage, view.shares(users), users))
        factors = self._factors[2]
        held_seconds = held.held_seconds(now)
        # Every user who held GPUs has a busy counter (0 when never busy), so efficiency is defined.
        busy_seconds = {key: 0.0 for key in held_seconds}
        for user, seconds in self._busy.busy_s.items():
            busy_seconds[(user, group_of(user))] = seconds
        if self._reclaims is None or now - self._reclaims[0] > self.slow_every:
            # Notices are updated in place (warned, then reclaimed): counted over the whole table,
            # so not at every scrape; the reclaimer acts once a round (a minute by default).
            self._reclaims = (now, self.reader.reclaim_counts())
        reclaim = self._reclaims[1]
        events = self._events
        return Snapshot(
            hostname=self.hostname,
            now=now,
            gpus=gpus,
            queue_waiting=[(group_of(e.user), e.gpus, e.submitted_at.timestamp()) for e in waiting],
            queue_wait=Histogram(self._queue.histogram(), self._queue.wait_sum),
            queue_exits=dict(self._queue.exits),
            allocation_events=dict(held.events),
            refusals=dict(events.refusals),
            reclaim_warnings=reclaim.warned,
            reclaims=reclaim.reclaimed,
            held_seconds=held_seconds,
            busy_seconds=busy_seconds,
            fairshare={(user, group_of(user)): f for user, f in factors.items()},
            last_sample=last_sample,
            drift=dict(events.drift),
            last_reconcile=events.last_reconcile.timestamp() if events.last_reconcile else None,
            last_drift=dict(events.last_drift),
            previous_scrape_seconds=self._previous_scrape,
        )


def gpu_states(
    inventory: list[Gpu], allocations: list[Allocation], samples: dict[str, GpuTelemetry], unhealthy: dict[str, str]
) -> list[GpuState]:
    """Each whole GPU of the inventory with its holder(s) (a MIG GPU's are its slices' holders)
    and its fresh sample, if any."""
    parent = {g.uuid: g.mig_parent or g.uuid for g in inventory}
    holders: dict[str, set[tuple[str, str, str]]] = {}
    for a in allocations:
        for uuid in a.gpu_uuids:
            holders.setdefault(parent.get(uuid, uuid), set()).add((a.user, a.server, a.group))
    states = []
    for gpu in inventory:
        if gpu.mig_parent:
            continue
        who = holders.get(gpu.uuid, set())
        t = samples.get(gpu.uuid)
        sample = None
        if t is not None:
            sample = GpuSample(
                t.utilization_gpu,
                t.utilization_memory,
                t.memory_used_mib,
                t.memory_total_mib or (gpu.memory_total // 2**20 or None),
                t.temperature_c,
                t.power_w,
                t.ecc_uncorrected,
            )
        states.append(
            GpuState(
                index=gpu.index,
                uuid=gpu.uuid,
                model=gpu.model,  # the inventory's (NVML's) name: stable, so series do not split
                pci_bus_id=gpu.pci_bus_id,
                user=",".join(sorted({u for u, _, _ in who})),
                server=",".join(sorted({s for _, s, _ in who})),
                group=",".join(sorted({g for _, _, g in who if g})),
                healthy=gpu.healthy and gpu.uuid not in unhealthy,
                sample=sample,
            )
        )
    return states


def render(collector: LedgerCollector) -> bytes:
    """The text of one scrape (Prometheus' text format 0.0.4)."""
    return exposition_text(build_families(collector.snapshot()))
