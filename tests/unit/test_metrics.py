"""The Prometheus exporter: what a scrape shows, read from a real ledger database (SQLite and
PostgreSQL), with counters that only grow and equal a fresh read of the whole history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from labgpu.db.hub_events import HubEventStore
from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import QueueStore
from labgpu.db.telemetry_store import TelemetryDB
from labgpu.fairshare.scheduler import usage_from_intervals
from labgpu.gpus.inventory import Gpu
from labgpu.gpus.telemetry import WORKSPACE, GpuReading, Owner, ProcessRecord
from labgpu.metrics.accounting import EventAccount, HeldAccount, QueueAccount
from labgpu.metrics.collector import LedgerCollector, render
from labgpu.metrics.series import GpuSample, GpuState, Snapshot, build_families

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
GIB = 2**30


class Clock:
    """One moment for the ledger (datetimes) and the collector (epoch seconds)."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def epoch(self) -> float:
        return self.now.timestamp()

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def samples(text: bytes | str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, by (name, labels)."""
    text = text.decode() if isinstance(text, bytes) else text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def gpus(n: int) -> list[Gpu]:
    return [
        Gpu(f"GPU-{i:04d}", i, "NVIDIA H100 80GB HBM3", 80 * GIB, pci_bus_id=f"0000:{i:02x}:00.0") for i in range(n)
    ]


# ---------------------------------------------------------------------------------------------
# The exposition (pure)
# ---------------------------------------------------------------------------------------------


def test_a_gpu_has_dcgm_exporters_names_and_labels_plus_who_holds_it():
    held = GpuState(
        0,
        "GPU-a",
        "NVIDIA H100",
        "0000:01:00.0",
        "alice",
        "exp",
        "vision",
        True,
        GpuSample(87, 40, 1024, 81559, 61, 412.5, 0),
    )
    free = GpuState(1, "GPU-b", "NVIDIA H100", "0000:02:00.0", sample=None)
    found = samples(
        b"".join(
            line.encode() for line in _text(Snapshot(hostname="gpu1", now=1000.0, gpus=[held, free], last_sample=995.0))
        )
    )
    labels = dict(gpu="0", UUID="GPU-a", device="nvidia0", modelName="NVIDIA H100", Hostname="gpu1")
    holder = dict(labgpu_user="alice", labgpu_server="exp", labgpu_group="vision", pci_bus_id="0000:01:00.0")
    assert value(found, "DCGM_FI_DEV_GPU_UTIL", **labels, **holder) == 87
    assert value(found, "DCGM_FI_DEV_FB_USED", **labels, **holder) == 1024
    assert value(found, "DCGM_FI_DEV_FB_FREE", **labels, **holder) == 81559 - 1024
    assert value(found, "DCGM_FI_DEV_GPU_TEMP", **labels, **holder) == 61
    assert value(found, "DCGM_FI_DEV_POWER_USAGE", **labels, **holder) == 412.5
    assert value(found, "labgpu_gpu_allocated", **labels, **holder) == 1
    # A GPU without a fresh sample has no DCGM figures (as with dcgm-exporter down), but its
    # place in the ledger is still there.
    assert not any(name.startswith("DCGM") and ("UUID", "GPU-b") in key for name, key in found)
    free_labels = dict(gpu="1", UUID="GPU-b", device="nvidia1", modelName="NVIDIA H100", Hostname="gpu1")
    nobody = dict(labgpu_user="", labgpu_server="", labgpu_group="", pci_bus_id="0000:02:00.0")
    assert value(found, "labgpu_gpu_allocated", **free_labels, **nobody) == 0
    assert value(found, "labgpu_gpus", state="allocated") == 1
    assert value(found, "labgpu_gpus", state="free") == 1
    assert value(found, "labgpu_poller_last_sample_age_seconds") == 5


def test_counters_show_every_known_reason_from_zero_so_the_first_event_is_an_increase():
    found = samples("".join(_text(Snapshot(hostname="h", now=0.0, refusals={"quota": 2}))))
    assert value(found, "labgpu_spawn_refusals_total", reason="quota") == 2
    assert value(found, "labgpu_spawn_refusals_total", reason="capacity") == 0
    assert value(found, "labgpu_reclaims_total", reason="idle") == 0
    assert value(found, "labgpu_queue_exits_total", outcome="abandoned") == 0
    assert value(found, "labgpu_ledger_drift_total", kind="conflict") == 0


def test_a_poller_that_never_sampled_is_infinitely_stale():
    found = samples("".join(_text(Snapshot(hostname="h", now=50.0, gpus=[GpuState(0, "GPU-a", "H100")]))))
    assert value(found, "labgpu_poller_last_sample_age_seconds") == float("inf")


def _text(snapshot: Snapshot) -> list[str]:
    from prometheus_client import CollectorRegistry, generate_latest

    class Fixed:
        def collect(self):
            return [f.to_metric() for f in build_families(snapshot)]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())  # type: ignore[arg-type]
    return [generate_latest(registry).decode()]


# ---------------------------------------------------------------------------------------------
# The counters (pure)
# ---------------------------------------------------------------------------------------------


class Row:
    def __init__(self, id, at, action, user, gpus, allocation_id, group=""):
        self.id, self.at, self.action, self.user = id, at, action, user
        self.gpus, self.allocation_id, self.group = gpus, allocation_id, group


def test_held_seconds_count_released_and_still_held_gpus_per_user_and_charged_group():
    account = HeldAccount(half_life=3600.0)
    account.add(
        [
            Row(1, T0, "grant", "alice", 2, 10, "vision"),
            Row(2, T0 + timedelta(minutes=30), "release", "alice", 2, 10),
            Row(3, T0 + timedelta(minutes=40), "grant", "alice", 1, 11, ""),
        ]
    )
    now = (T0 + timedelta(hours=1)).timestamp()
    assert account.held_seconds(now) == {("alice", "vision"): 2 * 1800.0, ("alice", ""): 1200.0}
    assert account.events == {"grant": 2, "release": 1}
    assert account.last_group == {"alice": ""}


def test_fair_share_usage_decays_exactly_as_the_queue_computes_it_however_often_it_is_read():
    account = HeldAccount(half_life=3600.0)
    start, end = T0.timestamp(), (T0 + timedelta(hours=2)).timestamp()
    account.add([Row(1, T0, "grant", "bob", 4, 1), Row(2, T0 + timedelta(hours=2), "release", "bob", 4, 1)])
    account.add([Row(3, T0 + timedelta(hours=3), "grant", "bob", 1, 2)])
    now = (T0 + timedelta(hours=5)).timestamp()
    expected = usage_from_intervals(
        [(start, end, 4.0), ((T0 + timedelta(hours=3)).timestamp(), None, 1.0)], now, 3600.0
    )
    assert account.usage(now)["bob"] == pytest.approx(expected, rel=1e-9)


class Entry:
    def __init__(self, id, status, waited_s=0.0, ended_at=None):
        self.id, self.status, self.ended_at = id, status, ended_at
        self.submitted_at = (ended_at or T0) - timedelta(seconds=waited_s)


def test_queue_waits_fill_a_cumulative_histogram_and_each_entry_counts_once_when_it_ends():
    account = QueueAccount(buckets=(60, 3600))
    account.add([Entry(1, "granted", 30, T0), Entry(2, "waiting"), Entry(3, "granted", 600, T0)])
    assert (account.last_id, account.waiting_ids) == (3, {2})
    # The next read: entries after 3, and entry 2 again (it was waiting).
    account.add([Entry(2, "granted", 7200, T0 + timedelta(hours=2)), Entry(4, "cancelled", 5, T0)])
    account.add([Entry(5, "waiting")])
    account.add([Entry(5, "waiting")])  # still waiting: nothing counted
    assert account.histogram() == [("60", 1.0), ("3600", 2.0), ("+Inf", 3.0)]
    assert account.wait_sum == 30 + 600 + 7200
    assert account.exits == {"granted": 3, "cancelled": 1}
    assert account.waiting_ids == {5}


class Event:
    def __init__(self, id, at, kind, reason, count=1):
        self.id, self.at, self.kind, self.reason, self.count = id, at, kind, reason, count


def test_drift_totals_add_up_and_the_last_reconcile_is_the_newest_ones_findings():
    account = EventAccount()
    later = T0 + timedelta(days=1)
    account.add([Event(1, T0, "reconcile", "released", 2), Event(2, T0, "reconcile", "conflict", 1)])
    account.add([Event(3, T0 + timedelta(hours=1), "refusal", "quota"), Event(4, later, "reconcile", "released", 0)])
    account.add([Event(5, later, "reconcile", "adopted", 3)])
    assert account.drift == {"released": 2, "conflict": 1, "adopted": 3}
    assert (account.last_reconcile, account.last_drift) == (later, {"released": 0, "adopted": 3})
    assert (account.refusals, account.last_id) == ({"quota": 1}, 5)


def test_our_text_is_byte_for_byte_what_prometheus_client_writes():
    from prometheus_client import CollectorRegistry, generate_latest

    from labgpu.metrics.series import exposition_text

    snapshot = Snapshot(
        hostname='gpu "1"\\n',
        now=10.0,
        gpus=[GpuState(0, "GPU-a", "H100", user="a\nb", sample=GpuSample(1, 2, 3, 4, 5, 6.5, 7))],
        held_seconds={("alice", "vision"): 1e21},
        refusals={"quota": 3},
        last_sample=float("nan"),
    )

    class Fixed:
        def collect(self):
            return [f.to_metric() for f in build_families(snapshot)]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())  # type: ignore[arg-type]
    assert exposition_text(build_families(snapshot)) == generate_latest(registry)


# ---------------------------------------------------------------------------------------------
# The collector on a real database
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def hub_db(ledger_db):
    clock = Clock()
    ledger = Ledger(ledger_db, clock=clock)
    ledger.sync_inventory(gpus(4))
    yield ledger_db, ledger, clock
    ledger.close()


def tick(telemetry: TelemetryDB, at: float, busy_user: str | None = None, util: int = 90) -> None:
    readings = [
        (
            GpuReading(
                f"GPU-{i:04d}",
                i,
                "NVIDIA H100 80GB HBM3",
                81559,
                utilization_gpu=util if i == 0 else 0,
                memory_used_mib=2048 if i == 0 else 0,
                temperature_c=55,
                power_w=300.0,
            ),
            5.0,
            None,
        )
        for i in range(4)
    ]
    processes = []
    if busy_user:
        processes.append(
            ProcessRecord("GPU-0000", 4242, Owner(WORKSPACE, "c0ffee", busy_user, ""), 2048, util, util / 100)
        )
    telemetry.write_tick(at, readings, processes)


def test_a_scrape_reads_the_ledger_telemetry_queue_reclaims_and_hub_events(hub_db):
    url, ledger, clock = hub_db
    ledger.allocate("alice", "", 1, group="vision")
    queue = QueueStore(ledger, clock=clock)
    waiting = queue.enqueue("bob", "", 2)
    clock.advance(600)
    telemetry = TelemetryDB(url, clock=clock)
    for k in range(3):
        tick(telemetry, clock.epoch() - 10 + 5 * k, busy_user="alice")
    events = HubEventStore(url, clock=clock)
    events.record_refusal("carol", "", "quota", "You asked for 4 GPUs; your limit is 2.")
    events.record_reconcile({"adopted": 1, "released": 2, "stopped": 0, "conflict": 0, "skipped": 0})
    collector = LedgerCollector(url, hostname="gpu1", clock=clock.epoch)
    try:
        found = samples(render(collector))
    finally:
        collector.close()
        for store in (events, telemetry, queue):
            store.close()
    alice = dict(
        gpu="0",
        UUID="GPU-0000",
        device="nvidia0",
        modelName="NVIDIA H100 80GB HBM3",
        Hostname="gpu1",
        pci_bus_id="0000:00:00.0",
        labgpu_user="alice",
        labgpu_server="",
        labgpu_group="vision",
    )
    assert value(found, "DCGM_FI_DEV_GPU_UTIL", **alice) == 90
    assert value(found, "DCGM_FI_DEV_FB_USED", **alice) == 2048
    assert value(found, "labgpu_gpus", state="allocated") == 1
    assert value(found, "labgpu_gpus_allocated", labgpu_group="vision") == 1
    assert value(found, "labgpu_queue_length", labgpu_group="") == 1
    assert value(found, "labgpu_queue_gpus_requested", labgpu_group="") == 2
    assert value(found, "labgpu_queue_oldest_wait_seconds") == 600
    assert value(found, "labgpu_gpu_held_seconds_total", labgpu_user="alice", labgpu_group="vision") == 600
    # three 5 s ticks at 90 % busy
    assert value(found, "labgpu_gpu_busy_seconds_total", labgpu_user="alice", labgpu_group="vision") == pytest.approx(
        13.5
    )
    assert value(found, "labgpu_allocation_events_total", action="grant") == 1
    assert value(found, "labgpu_spawn_refusals_total", reason="quota") == 1
    assert value(found, "labgpu_ledger_drift_total", kind="released") == 2
    assert value(found, "labgpu_ledger_drift_last_reconcile", kind="adopted") == 1
    assert value(found, "labgpu_reconcile_last_timestamp_seconds") == clock.epoch()
    assert value(found, "labgpu_poller_last_sample_age_seconds") == 0
    # alice used all the GPU time there was; bob, waiting, used none, so the queue serves him
    # first (without a policy both share one group, and he inherits half of its usage: Slurm's).
    bob = value(found, "labgpu_fairshare_factor", labgpu_user="bob", labgpu_group="")
    assert bob > value(found, "labgpu_fairshare_factor", labgpu_user="alice", labgpu_group="vision")
    assert waiting.id


def test_counters_only_grow_and_a_long_running_collector_agrees_with_a_fresh_one(hub_db):
    url, ledger, clock = hub_db
    telemetry = TelemetryDB(url, clock=clock)
    queue = QueueStore(ledger, clock=clock)
    collector = LedgerCollector(url, hostname="gpu1", clock=clock.epoch)
    names = (
        "labgpu_gpu_held_seconds_total",
        "labgpu_gpu_busy_seconds_total",
        "labgpu_queue_wait_seconds_count",
        "labgpu_allocation_events_total",
        "labgpu_queue_exits_total",
    )
    previous: dict = {}
    try:
        for step in range(6):
            user = ("alice", "bob")[step % 2]
            ledger.allocate(user, "", 1)
            entry = queue.enqueue("carol", f"s{step}", 1)
            clock.advance(40)
            queue.grant(entry.id, ["GPU-0003"])
            for k in range(8):  # 8 ticks of 5 s, rolled up into minutes as the poller does
                tick(telemetry, clock.epoch() + 5 * k, busy_user=user, util=50)
            clock.advance(40)
            telemetry.roll_up(clock.epoch())
            if step % 2:
                ledger.release(user, "")
            found = samples(render(collector))
            for key, v in found.items():
                if key[0] in names and key in previous:
                    assert v >= previous[key], f"{key} went down: {previous[key]} -> {v}"
            previous = found
        fresh = LedgerCollector(url, hostname="gpu1", clock=clock.epoch)
        try:
            again = samples(render(fresh))
        finally:
            fresh.close()
        for key, v in previous.items():
            if key[0] in names:
                assert again[key] == pytest.approx(v), key
        assert value(previous, "labgpu_queue_wait_seconds_count") == 6
        assert value(previous, "labgpu_gpu_busy_seconds_total", labgpu_user="bob", labgpu_group="") == pytest.approx(
            3 * 8 * 5 * 0.5
        )
    finally:
        collector.close()
        telemetry.close()
        queue.close()


def test_a_gpu_the_poller_marked_unhealthy_is_shown_unhealthy(hub_db):
    url, _ledger, clock = hub_db
    telemetry = TelemetryDB(url, clock=clock)
    reading = GpuReading("GPU-0002", 2, "NVIDIA H100 80GB HBM3", 81559, error="GPU is lost")
    telemetry.write_tick(clock.epoch(), [(reading, 5.0, "NVML error on GPU 2: GPU is lost")], [])
    collector = LedgerCollector(url, hostname="gpu1", clock=clock.epoch)
    try:
        found = samples(render(collector))
    finally:
        collector.close()
        telemetry.close()
    assert value(found, "labgpu_gpus", state="unhealthy") == 1
    gpu2 = dict(
        gpu="2",
        UUID="GPU-0002",
        device="nvidia2",
        modelName="NVIDIA H100 80GB HBM3",
        Hostname="gpu1",
        pci_bus_id="0000:02:00.0",
        labgpu_user="",
        labgpu_server="",
        labgpu_group="",
    )
    assert value(found, "labgpu_gpu_healthy", **gpu2) == 0


def test_labgpu_metrics_prints_what_the_endpoint_serves(tmp_path, capsysbinary):
    from labgpu.cli.main import main

    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.sync_inventory(gpus(2))
        ledger.allocate("alice", "", 1)
    assert main(["metrics", "--db", str(tmp_path / "ledger.sqlite"), "--quotas", "none", "--hostname", "gpu1"]) == 0
    found = samples(capsysbinary.readouterr().out)
    assert value(found, "labgpu_gpus", state="allocated") == 1
    assert value(found, "labgpu_gpus", state="free") == 1
    assert main(["metrics", "--db", str(tmp_path / "missing.sqlite")]) == 1
