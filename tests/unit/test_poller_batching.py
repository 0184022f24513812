"""The poller writes a few ticks per transaction (issue 21: the write was two thirds of a
tick's cost): batches of ``write_every``, a health change and each new minute written at once,
nothing lost when the database refuses a write, and the store writing a batch exactly as it
writes the same ticks one by one (SQLite and PostgreSQL, ``ledger_db``)."""

from __future__ import annotations

import contextlib
import logging
import threading

import pytest
from sqlalchemy import select

from labgpu.cli.main import main as labgpu_main
from labgpu.db.telemetry_store import GPU, GPU_SAMPLE, PROCESS_SAMPLE, TelemetryDB
from labgpu.gpus.telemetry import WORKSPACE, GpuReading, Owner, ProcessReading, ProcessRecord, Retention
from labgpu.services.attribution import ProcessAttributor
from labgpu.services.poller import MAX_PENDING_TICKS, Poller

START = 1_800_000_000.0  # a whole hour


class EventStore:
    """Records the poller's calls in order; ``fail`` makes writes raise (a locked database)."""

    def __init__(self):
        self.events, self.written, self.fail = [], [], False

    def write_ticks(self, ticks):
        if self.fail:
            raise RuntimeError("database is locked")
        self.events.append(("write", [ts for ts, _, _ in ticks]))
        self.written += [ts for ts, _, _ in ticks]

    def roll_up(self, now):
        self.events.append(("roll_up", now))

    def prune(self, now, retention):
        self.events.append(("prune", now))


class Repeat:
    def __init__(self, readings):
        self.readings = readings

    def read(self):
        return self.readings() if callable(self.readings) else self.readings

    def close(self):
        pass


def gpu(util=50, error=None):
    return GpuReading(uuid="GPU-a", index=0, utilization_gpu=util, memory_used_mib=100, error=error)


def test_ticks_are_written_in_batches_and_each_new_minute_is_written_before_its_roll_up():
    store = EventStore()
    poller = Poller(Repeat([gpu()]), store, ProcessAttributor(None), interval_s=5, write_every=6)
    for i in range(25):  # START .. START + 120 s
        poller.tick(START + 5 * i)
    writes = [e[1] for e in store.events if e[0] == "write"]
    assert [len(w) for w in writes] == [1, 6, 6, 6, 6]
    first_roll = store.events.index(("roll_up", START + 60))
    assert store.events[first_roll - 1] == ("write", [START + 5 * i for i in range(7, 13)])  # written, then rolled up
    assert store.written == [START + 5 * i for i in range(25)]  # every tick once, in order


def test_a_health_change_is_written_at_once():
    readings = iter([[gpu()]] * 3 + [[gpu(error="GPU is lost")]] + [[gpu()]] * 2)
    store = EventStore()
    poller = Poller(Repeat(lambda: next(readings)), store, ProcessAttributor(None), interval_s=5, write_every=6)
    for i in range(6):
        poller.tick(START + 5 + 5 * i)  # all in one minute: only health and the first tick flush
    assert [e[1] for e in store.events if e[0] == "write"] == [
        [START + 5],  # the first tick (a new minute)
        [START + 10, START + 15, START + 20],  # the GPU turned unhealthy at 20
        [START + 25],  # and healthy again
    ]


def test_a_refused_write_loses_no_tick_and_the_backlog_is_bounded(caplog):
    store = EventStore()
    poller = Poller(Repeat([gpu()]), store, ProcessAttributor(None), interval_s=5, write_every=2)
    poller.tick(START)
    store.fail = True
    refused = 0
    for i in range(1, 4):
        try:
            poller.tick(START + 5 * i)
        except RuntimeError:
            refused += 1
    assert refused == 2  # ticks 2 and 3 each tried to write the backlog
    store.fail = False
    poller.tick(START + 20)
    assert store.written == [START + 5 * i for i in range(5)]

    store.fail = True
    with caplog.at_level(logging.ERROR, logger="labgpu.services.poller"):
        for i in range(MAX_PENDING_TICKS + 10):
            with contextlib.suppress(RuntimeError):
                poller.tick(START + 25 + 5 * i)
    assert len(poller._pending) == MAX_PENDING_TICKS
    assert sum("oldest unwritten ticks are dropped" in r.getMessage() for r in caplog.records) == 1
    store.fail = False
    poller.flush()
    assert store.written[-1] == START + 25 + 5 * (MAX_PENDING_TICKS + 9)


def test_stopping_the_poller_writes_what_it_holds():
    store = EventStore()
    poller = Poller(Repeat([gpu()]), store, ProcessAttributor(None), interval_s=1, write_every=100)
    stop = threading.Event()
    clock = iter(START + i for i in range(1000))

    def tick(now):
        report = Poller.tick(poller, now)
        if len(store.written) + len(poller._pending) >= 3:
            stop.set()
        return report

    poller.tick = tick
    poller.run(stop, clock=lambda: next(clock))
    assert store.written == [START, START + 1, START + 2]


def test_write_every_below_one_is_refused(capsys):
    with pytest.raises(ValueError, match="--write-every must be >= 1"):
        Poller(Repeat([]), EventStore(), ProcessAttributor(None), interval_s=5, write_every=0)
    with pytest.raises(SystemExit):
        labgpu_main(["poller", "--write-every", "0"])
    assert "--write-every must be 1-120 ticks (got 0)" in capsys.readouterr().err


def _ticks():
    alice = Owner(WORKSPACE, "c" * 64, "alice", "")
    ticks = []
    for i in range(8):
        problem = "NVML error on GPU 1: GPU is lost" if i in (3, 4) else None
        a = GpuReading(
            uuid="GPU-a",
            index=0,
            name="H100",
            memory_total_mib=80_000,
            utilization_gpu=90 + i,
            memory_used_mib=1000 + i,
            temperature_c=60,
            power_w=300.5,
            processes=(ProcessReading(7, 500),),
        )
        b = GpuReading(uuid="GPU-b", index=1, utilization_gpu=i, error="GPU is lost" if problem else None)
        processes = [ProcessRecord("GPU-a", 7, alice, 500, None, 1.0)]
        ticks.append((START + 5 * i, [(a, 5.0, None), (b, 5.0, problem)], processes))
    return ticks


def _rows(db):
    with db.reader.connect() as conn:
        samples = [tuple(r) for r in conn.execute(select(GPU_SAMPLE).order_by(GPU_SAMPLE.c.gpu_id, GPU_SAMPLE.c.ts_ms))]
        processes = [tuple(r) for r in conn.execute(select(PROCESS_SAMPLE).order_by(PROCESS_SAMPLE.c.ts_ms))]
        gpus = [tuple(r) for r in conn.execute(select(GPU).order_by(GPU.c.id))]
    return samples, processes, gpus


def test_a_batch_is_written_exactly_as_the_same_ticks_one_by_one(tmp_path, ledger_db):
    one_by_one = TelemetryDB(f"sqlite:///{tmp_path / 'one.sqlite'}")
    for tick in _ticks()[:5]:  # up to the middle of GPU-b's trouble
        one_by_one.write_tick(*tick)
    batched = TelemetryDB(ledger_db)
    batched.write_ticks(_ticks()[:5])
    assert _rows(batched) == _rows(one_by_one)
    assert batched.unhealthy_gpus() == {"GPU-b": "NVML error on GPU 1: GPU is lost"}
    problem_since = {row[1]: row[-2] for row in _rows(batched)[2]}
    for tick in _ticks()[5:]:
        one_by_one.write_tick(*tick)
    batched.write_ticks(_ticks()[5:])
    assert _rows(batched) == _rows(one_by_one) and batched.unhealthy_gpus() == {}
    assert len(_rows(batched)[0]) == 16 and len(_rows(batched)[1]) == 8
    assert problem_since  # columns as read, whatever their order
    batched.write_ticks([])  # nothing to write: no transaction, no error
    batched.roll_up(START + 3600)
    batched.prune(START + 3 * 3600, Retention(raw_s=3600))
    assert _rows(batched)[0] == [] and _rows(batched)[1] == []  # pruned GPU by GPU, all of it


def test_roll_ups_every_ten_minutes_write_first_and_the_figures_do_not_change(tmp_path):
    store = EventStore()
    poller = Poller(Repeat([gpu()]), store, ProcessAttributor(None), interval_s=5, write_every=6, roll_up_every_s=600)
    for i in range(12 * 25):  # 25 minutes
        poller.tick(START + 5 * i)
    assert [e[1] for e in store.events if e[0] == "roll_up"] == [START, START + 600, START + 1200]
    for at in (START + 600, START + 1200):
        i = store.events.index(("roll_up", at))
        assert store.events[i - 1][0] == "write" and store.events[i - 1][1][-1] == at
    with pytest.raises(ValueError, match="whole minutes dividing an hour"):
        Poller(Repeat([]), EventStore(), ProcessAttributor(None), interval_s=5, roll_up_every_s=420)

    # The same hour of ticks into two databases, rolled up every minute and every ten: the
    # scheduler's figures (busy fraction, usage) read the same.
    attributor = ProcessAttributor(lambda cid: None, tmp_path)
    dbs = []
    for every in (60, 600):
        db = TelemetryDB(f"sqlite:///{tmp_path / f'every{every}.sqlite'}")
        poller = Poller(
            Repeat(lambda: [gpu(util=40), GpuReading(uuid="GPU-b", index=1, utilization_gpu=0)]),
            db,
            attributor,
            interval_s=5,
            write_every=6,
            roll_up_every_s=every,
        )
        for i in range(12 * 67):
            poller.tick(START + 5 * i)
        poller.flush()
        dbs.append(db)
    for since, until in ((START, START + 3600), (START + 1800, START + 67 * 60), (START + 3000, START + 3900)):
        assert dbs[0].busy_fraction(["GPU-a"], since, until) == pytest.approx(
            dbs[1].busy_fraction(["GPU-a"], since, until)
        )
        assert dbs[0].usage(since, until) == dbs[1].usage(since, until)
