"""The telemetry poller's pure parts and its loop, run against the NVML trace recorded on an
H100 (tests/data/nvml-1xh100-load.json) and synthetic /proc trees."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labgpu.gpus.sampling import ReplayTelemetrySource
from labgpu.gpus.telemetry import (
    CONTAINER,
    GONE,
    HOST,
    HOUR,
    MINUTE,
    WORKSPACE,
    GpuReading,
    GpuSample,
    Owner,
    OwnerSample,
    ProcessReading,
    busy_shares,
    health_problem,
    merge_gpu_rollups,
    merge_owner_rollups,
    rollup_gpu_samples,
    rollup_owner_samples,
)
from labgpu.services.attribution import ProcessAttributor, container_id_from_cgroup
from labgpu.services.poller import Poller, open_with_backoff

DATA = Path(__file__).resolve().parent.parent / "data"
H100_TRACE = DATA / "nvml-1xh100-load.json"
CID = "0123456789abcdef" * 4


def write_cgroup(proc_root: Path, pid: int, text: str) -> None:
    (proc_root / str(pid)).mkdir(parents=True, exist_ok=True)
    (proc_root / str(pid) / "cgroup").write_text(text)


# ---- cgroup parsing -----------------------------------------------------------------------


def test_container_id_from_cgroup_v1_and_v2_layouts():
    v1 = f"12:memory:/docker/{CID}\n11:cpu,cpuacct:/docker/{CID}\n0::/docker/{CID}\n"
    v2 = f"0::/system.slice/docker-{CID}.scope\n"
    assert container_id_from_cgroup(v1) == CID
    assert container_id_from_cgroup(v2) == CID


def test_host_processes_have_no_container_id():
    assert container_id_from_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n") is None
    assert container_id_from_cgroup("0::/\n") is None
    # A short or non-hex id is not a Docker container id.
    assert container_id_from_cgroup("0::/docker/abc123\n") is None


@settings(max_examples=200, deadline=None)
@given(
    cid=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    prefix=st.sampled_from(["", "/kubepods", "/system.slice/containerd.service", "/lab"]),
    v2=st.booleans(),
)
def test_any_docker_container_id_is_found(cid, prefix, v2):
    path = f"{prefix}/docker-{cid}.scope" if v2 else f"{prefix}/docker/{cid}"
    assert container_id_from_cgroup(f"0::{path}\n") == cid


# ---- attribution from a synthetic /proc ---------------------------------------------------


def test_attribution_maps_pids_to_users_other_containers_and_host(tmp_path):
    other = "f" * 64
    write_cgroup(tmp_path, 100, f"0::/system.slice/docker-{CID}.scope\n")
    write_cgroup(tmp_path, 200, f"4:memory:/docker/{other}\n0::/docker/{other}\n")
    write_cgroup(tmp_path, 300, "0::/user.slice/user-0.slice/session-1.scope\n")
    labels = {CID: {"org.labgpu.user": "alice", "org.labgpu.server": "train"}, other: {"maintainer": "x"}}
    attributor = ProcessAttributor(labels.get, tmp_path)
    assert attributor.owner_of(100) == Owner(WORKSPACE, CID, "alice", "train")
    assert attributor.owner_of(200) == Owner(CONTAINER, other)
    assert attributor.owner_of(300) == Owner(HOST)
    assert attributor.owner_of(400) == Owner(GONE)  # exited before we looked


def test_labels_are_looked_up_once_per_container_and_retried_after_failures(tmp_path):
    write_cgroup(tmp_path, 100, f"0::/docker/{CID}\n")
    calls = []
    docker_up = {"ok": False}

    def lookup(container_id):
        calls.append(container_id)
        if not docker_up["ok"]:
            raise ConnectionError("Docker is restarting")
        return {"org.labgpu.user": "bob"}

    attributor = ProcessAttributor(lookup, tmp_path)
    assert attributor.owner_of(100) == Owner(CONTAINER, CID)  # recorded, not lost
    docker_up["ok"] = True
    assert attributor.owner_of(100).user == "bob"
    assert attributor.owner_of(100).user == "bob"
    assert len(calls) == 2  # the failure was retried, the success cached


# ---- pure arithmetic ----------------------------------------------------------------------


def test_busy_share_splits_device_utilization_by_sm_utilization():
    reading = GpuReading(
        uuid="GPU-a",
        index=0,
        utilization_gpu=90,
        processes=(ProcessReading(1, 100, sm_util=60), ProcessReading(2, 100, sm_util=30)),
    )
    shares = busy_shares(reading)
    assert shares[1] == pytest.approx(0.6)
    assert shares[2] == pytest.approx(0.3)
    no_sm = GpuReading(uuid="GPU-a", index=0, utilization_gpu=50, processes=(ProcessReading(1), ProcessReading(2)))
    assert busy_shares(no_sm) == {1: pytest.approx(0.25), 2: pytest.approx(0.25)}


gpu_samples = st.lists(
    st.builds(
        GpuSample,
        gpu=st.sampled_from(["g0", "g1"]),
        ts=st.floats(0, 3 * HOUR, allow_nan=False),
        dt_s=st.sampled_from([1.0, 5.0]),
        utilization_gpu=st.one_of(st.none(), st.integers(0, 100)),
        memory_used_mib=st.one_of(st.none(), st.integers(0, 80_000)),
        temperature_c=st.one_of(st.none(), st.integers(20, 95)),
        power_w=st.one_of(st.none(), st.floats(0, 700)),
        healthy=st.booleans(),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(gpu_samples)
def test_hour_rollups_from_minutes_equal_hour_rollups_from_raw(samples):
    via_minutes = merge_gpu_rollups(rollup_gpu_samples(samples, MINUTE), HOUR)
    direct = rollup_gpu_samples(samples, HOUR)
    assert [(r.bucket, r.gpu, r.samples, r.util_max, r.memory_used_max_mib) for r in via_minutes] == [
        (r.bucket, r.gpu, r.samples, r.util_max, r.memory_used_max_mib) for r in direct
    ]
    for a, b in zip(via_minutes, direct, strict=False):
        assert a.busy_s == pytest.approx(b.busy_s) and a.energy_j == pytest.approx(b.energy_j)
        assert a.unhealthy_s == pytest.approx(b.unhealthy_s)
    total_busy = sum(s.dt_s * (s.utilization_gpu or 0) / 100 for s in samples)
    assert sum(r.busy_s for r in direct) == pytest.approx(total_busy)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.builds(
            OwnerSample,
            gpu=st.sampled_from(["g0", "g1"]),
            owner=st.sampled_from(["alice", "bob"]),
            ts=st.integers(0, 2 * HOUR).map(float),
            dt_s=st.just(5.0),
            busy=st.floats(0, 1),
            memory_used_mib=st.integers(0, 1000),
        ),
        max_size=60,
    )
)
def test_owner_rollups_compose_and_never_count_a_gpu_second_twice(samples):
    minutes = rollup_owner_samples(samples, MINUTE)
    hours = merge_owner_rollups(minutes, HOUR)
    direct = rollup_owner_samples(samples, HOUR)
    assert [(r.bucket, r.gpu, r.owner, r.samples) for r in hours] == [
        (r.bucket, r.gpu, r.owner, r.samples) for r in direct
    ]
    for r in direct:  # busy can never exceed the time the owner was on the GPU
        assert r.busy_s <= r.seconds + 1e-9
    distinct_ticks = {(s.gpu, s.owner, s.ts) for s in samples}
    assert sum(r.seconds for r in direct) == pytest.approx(5.0 * len(distinct_ticks))


def test_health_problems_say_which_gpu_and_what_to_do():
    lost = GpuReading(uuid="GPU-x", index=3, error="GPU is lost")
    assert "GPU 3" in health_problem(lost) and "GPU is lost" in health_problem(lost)
    ecc = GpuReading(uuid="GPU-x", index=1, utilization_gpu=0, ecc_uncorrected=2)
    assert "2 uncorrectable ECC errors" in health_problem(ecc) and "reset" in health_problem(ecc)
    assert health_problem(GpuReading(uuid="GPU-x", index=0, utilization_gpu=5, ecc_uncorrected=0)) is None


# ---- the replay source --------------------------------------------------------------------


def test_replay_source_gives_the_recorded_h100_ticks_in_order():
    source = ReplayTelemetrySource(H100_TRACE, loop=False)
    assert "H100" in source.recorded_on["gpus"]
    readings = [source.read() for _ in range(len(source.ticks))]
    utils = [r[0].utilization_gpu for r in readings]
    assert max(utils) >= 98 and min(utils) == 0  # load, and idle around it
    load_pid = source.recorded_on["load_pid"]
    assert any(p.pid == load_pid and p.used_memory_mib >= 1000 for r in readings for p in r[0].processes)
    with pytest.raises(EOFError, match="trace ended"):
        source.read()


def test_a_file_that_is_no_trace_is_refused_with_its_path(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"ticks": []}))
    with pytest.raises(ValueError, match=r"x\.json: not an NVML trace"):
        ReplayTelemetrySource(bad)
    with pytest.raises(ValueError, match=r"missing\.json: cannot read"):
        ReplayTelemetrySource(tmp_path / "missing.json")


# ---- the poller loop (with an in-memory store: the SQLite store has its own tests) ---------


class ListStore:
    """Keeps what the poller writes, in order (the real store is tested in test_telemetry_store)."""

    def __init__(self):
        self.ticks, self.rollups, self.prunes = [], [], []

    def write_ticks(self, ticks):
        for tick in ticks:
            self.write_tick(*tick)

    def write_tick(self, ts, gpus, processes):
        self.ticks.append((ts, gpus, processes))

    def roll_up(self, now):
        self.rollups.append(now)

    def prune(self, now, retention):
        self.prunes.append(now)


class ScriptedSource:
    """Replays hand-written ticks; a string in place of a GPU reading becomes an NVML error."""

    def __init__(self, ticks):
        self.ticks = list(ticks)

    def read(self):
        return self.ticks.pop(0)

    def close(self):
        pass


def test_two_gpu_trace_attributes_the_load_to_the_gpu_it_ran_on_only(tmp_path):
    source = ReplayTelemetrySource(DATA / "nvml-2xh200-load.json", loop=False)
    load_pid, load_gpu = source.recorded_on["load_pid"], source.recorded_on["load_gpu"]
    write_cgroup(tmp_path, load_pid, f"0::/docker/{CID}\n")
    store = ListStore()
    poller = Poller(source, store, ProcessAttributor({CID: {"org.labgpu.user": "alice"}}.get, tmp_path), interval_s=1)
    for offset in source.offsets_s:
        poller.tick(offset)
    records = [p for _, _, procs in store.ticks for p in procs]
    assert records and {p.gpu_uuid for p in records if p.pid == load_pid} == {load_gpu}
    assert all(p.owner.user == "alice" for p in records if p.pid == load_pid)
    other_utils = [g[0].utilization_gpu for _, gpus, _ in store.ticks for g in gpus if g[0].uuid != load_gpu]
    assert len({g[0].uuid for _, gpus, _ in store.ticks for g in gpus}) == 2 and max(other_utils) <= 5


def test_poller_attributes_the_recorded_load_pid_and_rolls_up_once_a_minute(tmp_path):
    source = ReplayTelemetrySource(H100_TRACE, loop=False)
    load_pid = source.recorded_on["load_pid"]
    write_cgroup(tmp_path, load_pid, f"0::/system.slice/docker-{CID}.scope\n")
    store = ListStore()
    poller = Poller(source, store, ProcessAttributor({CID: {"org.labgpu.user": "alice"}}.get, tmp_path), interval_s=1)
    reports = [poller.tick(1_000_000.0 + i) for i in range(len(source.ticks))]
    processes = [p for _, _, procs in store.ticks for p in procs if p.pid == load_pid]
    assert processes and all(p.owner.user == "alice" for p in processes)
    assert max(p.busy for p in processes) >= 0.95
    assert sum(r.processes for r in reports) == sum(len(t[0].processes) for t in source.ticks)
    assert len(store.rollups) == len({int(t // 60) for t, _, _ in store.ticks})  # once per minute


def test_an_nvml_error_on_one_gpu_marks_it_unhealthy_and_the_others_go_on(caplog):
    def good(util):
        return GpuReading(uuid="GPU-good", index=0, utilization_gpu=util)

    lost = GpuReading(uuid="GPU-lost", index=1, error="GPU is lost")
    back = GpuReading(uuid="GPU-lost", index=1, utilization_gpu=0)
    store = ListStore()
    poller = Poller(
        ScriptedSource([[good(10), lost], [good(20), lost], [good(30), back]]),
        store,
        ProcessAttributor(None),
        interval_s=1,
    )
    with caplog.at_level(logging.WARNING, logger="labgpu.services.poller"):
        reports = [poller.tick(100.0 + i) for i in range(3)]
    assert [r.unhealthy for r in reports] == [["GPU-lost"], ["GPU-lost"], []]
    assert [g[0].utilization_gpu for _, gpus, _ in store.ticks for g in gpus if g[0].uuid == "GPU-good"] == [10, 20, 30]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "GPU is lost" in errors[0].getMessage()  # logged once, not every tick
    assert any("healthy again" in r.getMessage() for r in caplog.records)


def test_health_changes_reach_the_ledger_hook_once_each_and_are_retried_when_it_fails():
    lost = GpuReading(uuid="GPU-lost", index=1, error="GPU is lost")
    back = GpuReading(uuid="GPU-lost", index=1, utilization_gpu=0)
    calls, ledger_up = [], {"ok": False}

    def record(uuid, problem):
        calls.append((uuid, problem))
        if not ledger_up["ok"]:
            raise RuntimeError("database is locked")

    poller = Poller(
        ScriptedSource([[lost], [lost], [lost], [back]]),
        ListStore(),
        ProcessAttributor(None),
        interval_s=1,
        on_health_change=record,
    )
    poller.tick(0.0)  # the ledger is busy: not recorded yet
    ledger_up["ok"] = True
    poller.tick(1.0)  # retried, recorded
    poller.tick(2.0)  # unchanged: no call
    poller.tick(3.0)  # recovered
    assert [(uuid, problem is None) for uuid, problem in calls] == [
        ("GPU-lost", False),
        ("GPU-lost", False),
        ("GPU-lost", True),
    ]


def test_a_gap_in_polling_is_not_counted_as_observed_time():
    store = ListStore()
    poller = Poller(
        ScriptedSource([[GpuReading(uuid="g", index=0, utilization_gpu=100)]] * 3),
        store,
        ProcessAttributor(None),
        interval_s=5,
    )
    for ts in (0.0, 5.0, 3600.0):  # the poller was down for an hour
        poller.tick(ts)
    assert [gpus[0][1] for _, gpus, _ in store.ticks] == [5.0, 5.0, 10.0]


def test_interval_below_one_second_is_refused():
    with pytest.raises(ValueError, match=r"--interval must be >= 1 s \(got 0.5\)"):
        Poller(ScriptedSource([]), ListStore(), ProcessAttributor(None), interval_s=0.5)


def test_nvml_init_failure_retries_with_growing_delays_and_a_clear_log_line(caplog):
    attempts, waits = [], []

    def open_source():
        attempts.append(1)
        if len(attempts) < 4:
            raise RuntimeError("NVML Shared Library Not Found")
        return ScriptedSource([])

    with caplog.at_level(logging.ERROR, logger="labgpu.services.poller"):
        source = open_with_backoff(open_source, sleep=waits.append, first_delay_s=1, max_delay_s=3)
    assert isinstance(source, ScriptedSource)
    assert waits == [1, 2, 3]
    assert "Is the NVIDIA driver loaded" in caplog.records[0].getMessage()
    assert "NVML Shared Library Not Found" in caplog.records[0].getMessage()


@pytest.mark.gpu
def test_real_nvml_source_reads_every_gpu():
    pynvml = pytest.importorskip("pynvml")
    try:
        from labgpu.gpus.sampling import NvmlTelemetrySource

        source = NvmlTelemetrySource()
    except pynvml.NVMLError as error:
        pytest.skip(f"no NVIDIA driver here: {error}")
    readings = source.read()
    source.close()
    assert readings and all(r.uuid.startswith(("GPU-", "MIG-")) for r in readings)
    assert all(r.error or (r.memory_total_mib and not math.isnan(r.utilization_gpu)) for r in readings)


def test_a_process_on_consecutive_ticks_is_attributed_once_and_unsettled_owners_are_asked_again():
    asked = []

    class CountingAttributor:
        def owner_of(self, pid):
            asked.append(pid)
            return {1: Owner(WORKSPACE, CID, "alice"), 2: Owner(CONTAINER, "f" * 64), 3: Owner(GONE)}[pid]

    def tick(*pids):
        return [GpuReading(uuid="g", index=0, utilization_gpu=50, processes=tuple(ProcessReading(p) for p in pids))]

    store = ListStore()
    ticks = [tick(1, 2, 3), tick(1, 2, 3), tick(2), tick(1)]
    poller = Poller(ScriptedSource(ticks), store, CountingAttributor(), interval_s=1)
    for i in range(len(ticks)):
        poller.tick(float(i))
    # alice's PID 1 is read once while listed, again after a tick without it; the other
    # container (its labels may come later) and the vanished PID 3 are asked every tick.
    assert asked == [1, 2, 3, 2, 3, 2, 1]
    assert [p.owner.user for _, _, procs in store.ticks for p in procs if p.pid == 1] == ["alice"] * 3
