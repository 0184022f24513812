"""The NVML telemetry source against a fake NVML that serves the traces recorded on real GPUs
(tests/data/nvml-*.json): it asks for per-process utilization (~2.7 ms per GPU on an H200)
only where processes share a GPU, reads the slowly changing fields every N ticks, never calls
the energy or sample-buffer functions, and the poller rolls up exactly what it did before."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from labgpu.gpus.sampling import NvmlTelemetrySource, ReplayTelemetrySource
from labgpu.gpus.telemetry import (
    GpuReading,
    GpuSample,
    OwnerSample,
    ProcessReading,
    busy_shares,
    rollup_gpu_samples,
    rollup_owner_samples,
)
from labgpu.services.attribution import ProcessAttributor
from labgpu.services.poller import Poller

DATA = Path(__file__).resolve().parent.parent / "data"
TRACES = sorted(DATA.glob("nvml-*.json"))
MIB = 1024 * 1024
START = 1_800_000_000.0


class NVMLError(Exception):
    pass


class NVMLError_NotFound(NVMLError):
    pass


class NVMLError_GpuIsLost(NVMLError):
    pass


class NVMLError_Unknown(NVMLError):
    pass


class FakeNvml:
    """Just enough of pynvml, serving one recorded tick at a time (``at``) and counting calls.
    Per-process samples carry the tick's time in microseconds, as NVML's CPU timestamps do."""

    NVMLError = NVMLError
    NVMLError_NotFound = NVMLError_NotFound
    NVMLError_GpuIsLost = NVMLError_GpuIsLost
    NVMLError_Unknown = NVMLError_Unknown
    NVML_TEMPERATURE_GPU = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0

    def __init__(self, ticks: list[list[GpuReading]]):
        self.ticks = ticks
        self.tick: list[GpuReading] = ticks[0]
        self.now = START
        self.calls: dict[str, int] = {}
        self.process_util_since: list[int] = []
        self.old_samples: dict[int, list[SimpleNamespace]] = {}  # extra samples per GPU index
        self.lost: set[int] = set()

    def at(self, index: int, now: float) -> None:
        self.tick, self.now = self.ticks[index], now

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _gpu(self, handle: int) -> GpuReading:
        if handle in self.lost:
            raise NVMLError_GpuIsLost("GPU is lost")
        return self.tick[handle]

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.tick)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self.tick[handle].uuid

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return self.tick[handle].name.encode()

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        g = self._gpu(handle)
        return SimpleNamespace(gpu=g.utilization_gpu, memory=g.utilization_memory)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        g = self._gpu(handle)
        return SimpleNamespace(total=g.memory_total_mib * MIB, used=g.memory_used_mib * MIB)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=p.pid, usedGpuMemory=p.used_memory_mib * MIB) for p in self._gpu(handle).processes]

    def nvmlDeviceGetProcessUtilization(self, handle: int, last_seen_us: int) -> list[SimpleNamespace]:
        self._count("process_utilization")
        self.process_util_since.append(last_seen_us)
        now_us = int(self.now * 1_000_000)
        samples = [
            SimpleNamespace(pid=p.pid, smUtil=p.sm_util or 0, memUtil=p.mem_util or 0, timeStamp=now_us)
            for p in self._gpu(handle).processes
        ] + self.old_samples.get(handle, [])
        fresh = [s for s in samples if s.timeStamp > last_seen_us]
        if not fresh:
            raise NVMLError_NotFound("Not Found")
        return fresh

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return self._gpu(handle).temperature_c

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return round(self._gpu(handle).power_w * 1000)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: int) -> int:
        self._count("clock_event_reasons")
        return self._gpu(handle).throttle_reasons

    def nvmlDeviceGetTotalEccErrors(self, handle: int, kind: int, counter: int) -> int:
        self._count("ecc")
        return self._gpu(handle).ecc_uncorrected

    def nvmlDeviceGetRemappedRows(self, handle: int) -> tuple[int, int, int, int]:
        self._count("remapped_rows")
        return (0, 0, int(bool(self._gpu(handle).remap_pending)), 0)

    def nvmlDeviceGetRetiredPagesPendingStatus(self, handle: int) -> int:
        raise AssertionError("remapped rows answer on these GPUs; retired pages are not asked")

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        raise AssertionError("~3 ms per GPU on an H200: the poller must not call it")

    def nvmlDeviceGetSamples(self, *args: object) -> object:
        raise AssertionError("~2.3 ms per GPU on an H200: the poller must not call it")


@pytest.fixture
def fake_nvml(monkeypatch):
    def install(ticks: list[list[GpuReading]]) -> FakeNvml:
        fake = FakeNvml(ticks)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        return fake

    return install


class SampleStore:
    """Turns what the poller writes into the samples the rollups add up (as the SQLite store)."""

    def __init__(self):
        self.gpu_samples: list[GpuSample] = []
        self.owner_samples: list[OwnerSample] = []

    def write_ticks(self, ticks):
        for tick in ticks:
            self.write_tick(*tick)

    def write_tick(self, ts, gpus, processes):
        dt_by_gpu = {}
        for reading, dt, problem in gpus:
            dt_by_gpu[reading.uuid] = dt
            self.gpu_samples.append(
                GpuSample(
                    reading.uuid,
                    ts,
                    dt,
                    reading.utilization_gpu,
                    reading.memory_used_mib,
                    reading.temperature_c,
                    reading.power_w,
                    problem is None,
                )
            )
        for p in processes:
            self.owner_samples.append(
                OwnerSample(p.gpu_uuid, p.owner, ts, dt_by_gpu[p.gpu_uuid], p.busy, p.used_memory_mib)
            )

    def roll_up(self, now):
        pass

    def prune(self, now, retention):
        pass


def run_poller(source, count: int, before_read=None) -> SampleStore:
    store = SampleStore()
    poller = Poller(source, store, ProcessAttributor(None, "/nonexistent"), interval_s=1)
    for i in range(count):
        if before_read:
            before_read(i)
        poller.tick(START + i)
    return store


@pytest.mark.parametrize("trace", TRACES, ids=[t.name for t in TRACES])
def test_the_poller_rolls_up_the_recorded_trace_exactly_as_before_without_asking_per_process(trace, fake_nvml):
    replay = ReplayTelemetrySource(trace, loop=False)
    ticks = replay.ticks
    before = run_poller(replay, len(ticks))
    fake = fake_nvml(ticks)
    nvml = NvmlTelemetrySource(slow_every=12)
    after = run_poller(nvml, len(ticks), lambda i: fake.at(i, START + i))

    # Per-process utilization is asked only on the GPU-ticks where processes shared a GPU.
    assert any(len(g.processes) == 1 for tick in ticks for g in tick)  # a load held its GPU alone
    shared = sum(len(g.processes) > 1 for tick in ticks for g in tick)
    assert fake.calls.get("process_utilization", 0) == shared
    for bucket in (60, 3600):
        assert rollup_gpu_samples(after.gpu_samples, bucket) == rollup_gpu_samples(before.gpu_samples, bucket)
        assert rollup_owner_samples(after.owner_samples, bucket) == rollup_owner_samples(before.owner_samples, bucket)
    assert [s.busy for s in after.owner_samples] == [s.busy for s in before.owner_samples]


def shared_tick(sm_a: int, sm_b: int | None, util: int) -> list[GpuReading]:
    processes = [ProcessReading(pid=100, used_memory_mib=1000, sm_util=sm_a, mem_util=10)]
    if sm_b is not None:
        processes.append(ProcessReading(pid=200, used_memory_mib=500, sm_util=sm_b, mem_util=5))

    return [
        GpuReading(
            uuid="GPU-shared",
            index=0,
            name="NVIDIA H200",
            memory_total_mib=143771,
            utilization_gpu=util,
            utilization_memory=20,
            memory_used_mib=1500,
            temperature_c=50,
            power_w=300.0,
            throttle_reasons=0,
            ecc_uncorrected=0,
            remap_pending=False,
            processes=tuple(processes),
        )
    ]


def test_a_shared_gpu_is_split_by_per_process_utilization_of_this_tick_only(fake_nvml):
    # Ticks 0-1: pid 100 alone (no per-process call); ticks 2-3: pid 200 joins (one call each).
    ticks = [shared_tick(90, None, 90), shared_tick(90, None, 90), shared_tick(60, 20, 80), shared_tick(30, 30, 60)]
    fake = fake_nvml(ticks)
    # A sample NVML still holds from before tick 1 must not count in tick 2.
    fake.old_samples[0] = [SimpleNamespace(pid=200, smUtil=100, memUtil=0, timeStamp=int((START + 0.5) * 1e6))]
    source = NvmlTelemetrySource(clock=lambda: fake.now)
    readings = []
    for i in range(len(ticks)):
        fake.at(i, START + i)
        readings.append(source.read()[0])

    assert fake.calls["process_utilization"] == 2
    assert fake.process_util_since == [int((START + 1) * 1e6), int((START + 2) * 1e6)]
    assert [(p.pid, p.sm_util) for p in readings[0].processes] == [(100, 90)]  # the device's figure
    assert [(p.pid, p.sm_util) for p in readings[2].processes] == [(100, 60), (200, 20)]
    assert {pid: round(share, 3) for pid, share in busy_shares(readings[2]).items()} == {100: 0.6, 200: 0.2}


def test_slow_fields_are_read_every_n_ticks_and_afresh_after_an_nvml_error(fake_nvml):
    ticks = [shared_tick(90, None, 90)] + [[replace(shared_tick(90, None, 90)[0], ecc_uncorrected=2)] for _ in range(5)]
    fake = fake_nvml(ticks)
    source = NvmlTelemetrySource(slow_every=5)
    seen = []
    for i in range(6):
        fake.at(i, START + i)
        fake.lost = {0} if i == 2 else set()
        seen.append(source.read()[0])
    # Read at tick 0, again at tick 3 (the GPU was lost at tick 2) and at tick 5 (every 5).
    assert fake.calls["ecc"] == fake.calls["remapped_rows"] == fake.calls["clock_event_reasons"] == 3
    assert [r.ecc_uncorrected for r in seen] == [0, 0, None, 2, 2, 2]
    assert seen[2].error == "GPU is lost"


def test_slow_every_below_one_tick_is_refused(fake_nvml):
    fake_nvml([shared_tick(1, None, 1)])
    with pytest.raises(ValueError, match=r"slow_every must be >= 1 tick \(got 0\)"):
        NvmlTelemetrySource(slow_every=0)
