"""The telemetry tables in a real database, SQLite and PostgreSQL alike (``ledger_db``): the
recorded H100 trace replayed through the real poller, rollups, retention, health, and the
scheduler's queries."""

from __future__ import annotations

from pathlib import Path

import pytest

from labgpu.cli.main import main as labgpu_main
from labgpu.db.telemetry_store import GPU_ROLLUP, GPU_SAMPLE, HeldSpan, TelemetryDB
from labgpu.gpus.sampling import ReplayTelemetrySource
from labgpu.gpus.telemetry import HOUR, GpuReading, ProcessReading, Retention
from labgpu.services.attribution import ProcessAttributor
from labgpu.services.poller import Poller

DATA = Path(__file__).resolve().parent.parent / "data"
H100_TRACE = DATA / "nvml-1xh100-load.json"
ALICE_CID = "a" * 64
START = 1_800_000_000.0  # a whole hour, so minute and hour buckets line up with the ticks


class ScriptedSource:
    def __init__(self, ticks):
        self.ticks = list(ticks)

    def read(self):
        return self.ticks.pop(0) if len(self.ticks) > 1 else self.ticks[0]

    def close(self):
        pass


def alice_attributor(proc_root: Path, pids) -> ProcessAttributor:
    for pid in pids:
        (proc_root / str(pid)).mkdir(parents=True, exist_ok=True)
        (proc_root / str(pid) / "cgroup").write_text(f"0::/system.slice/docker-{ALICE_CID}.scope\n")
    return ProcessAttributor({ALICE_CID: {"org.labgpu.user": "alice", "org.labgpu.server": ""}}.get, proc_root)


@pytest.fixture
def replayed(tmp_path, ledger_db):
    """The H100 trace replayed at its recorded 1 s ticks into a ledger."""
    source = ReplayTelemetrySource(H100_TRACE, loop=False)
    db = TelemetryDB(ledger_db)
    poller = Poller(source, db, alice_attributor(tmp_path / "proc", [source.recorded_on["load_pid"]]), interval_s=1)
    for offset in source.offsets_s:
        poller.tick(START + offset)
    return db, source


def test_busy_fraction_is_high_under_the_recorded_load_and_zero_after(replayed):
    db, source = replayed
    uuid = source.ticks[0][0].uuid
    started, ended = source.recorded_on["load_started_s"], source.recorded_on["load_ended_s"]
    assert db.busy_fraction([uuid], START + started + 3, START + ended - 1) >= 0.9
    assert db.busy_fraction([uuid], START + ended + 3, START + source.offsets_s[-1] + 1) <= 0.05
    assert db.busy_fraction(["GPU-never-seen"], START, START + 60) is None
    assert db.busy_fraction([uuid], START - 3600, START - 60) is None  # nothing recorded then


def test_gpu_hours_are_attributed_to_the_user_whose_container_ran_the_load(replayed):
    db, source = replayed
    load_s = source.recorded_on["load_ended_s"] - source.recorded_on["load_started_s"]
    report = db.usage(START, START + 3600, groups_of={"alice": ["vision-lab"]})
    alice = report.by_user["alice"]
    assert alice.gpu_hours_in_use * 3600 == pytest.approx(load_s, abs=3)
    assert 0.9 * load_s <= alice.gpu_hours_busy * 3600 <= load_s + 1
    assert report.by_group["vision-lab"] == alice


def test_held_gpu_hours_come_from_the_ledger_allocations(replayed):
    db, source = replayed
    uuid = source.ticks[0][0].uuid
    held = [HeldSpan("alice", uuid, START - 1800, START + 1800), HeldSpan("bob", uuid, START + 1800, None)]
    report = db.usage(START, START + 3600, held=held, groups_of={"bob": ["nlp"], "alice": ["nlp"]})
    assert report.by_user["alice"].gpu_hours_held == pytest.approx(0.5)
    assert report.by_user["bob"].gpu_hours_held == pytest.approx(0.5) and report.by_user["bob"].gpu_hours_busy == 0
    assert report.by_group["nlp"].gpu_hours_held == pytest.approx(1.0)


def simulate(db: TelemetryDB, tmp_path: Path, hours: int, retention: Retention, step_s: float = 60.0) -> None:
    """The recorded trace looped for ``hours`` on a fast clock (one tick per ``step_s``)."""
    source = ReplayTelemetrySource(H100_TRACE, loop=True)
    poller = Poller(
        source,
        db,
        alice_attributor(tmp_path / "proc", [source.recorded_on["load_pid"]]),
        interval_s=step_s,
        retention=retention,
    )
    for i in range(int(hours * 3600 / step_s)):
        poller.tick(START + i * step_s)


def test_pruned_history_still_answers_from_rollups_with_the_same_figures(tmp_path, ledger_db, second_ledger_db):
    full = TelemetryDB(ledger_db)
    pruned = TelemetryDB(second_ledger_db)
    # One tick per 2 minutes: 900 ticks per database, enough for every resolution and cutoff.
    simulate(full, tmp_path, 30, Retention(None, None, None), step_s=120)
    simulate(pruned, tmp_path, 30, Retention(raw_s=2 * HOUR, minute_s=6 * HOUR, hour_s=None), step_s=120)
    end = START + 30 * HOUR
    with pruned.reader.connect() as conn:
        oldest_raw = conn.execute(GPU_SAMPLE.select().order_by(GPU_SAMPLE.c.ts_ms).limit(1)).first().ts_ms / 1000
        oldest_minute = (
            conn.execute(
                GPU_ROLLUP.select().where(GPU_ROLLUP.c.resolution == 60).order_by(GPU_ROLLUP.c.bucket).limit(1)
            )
            .first()
            .bucket
        )
        hours = conn.execute(GPU_ROLLUP.select().where(GPU_ROLLUP.c.resolution == 3600)).all()
    assert end - 3 * HOUR <= oldest_raw  # raw kept 2 h (pruned at minute granularity)
    assert end - 8 * HOUR <= oldest_minute  # minute rollups kept 6 h (pruned by whole hours)
    assert len(hours) >= 29  # hour rollups kept for ever
    uuid = ReplayTelemetrySource(H100_TRACE).ticks[0][0].uuid
    for since, until in ((START, end), (START + 5 * HOUR, START + 7 * HOUR), (end - HOUR, end), (START, START + HOUR)):
        assert pruned.busy_fraction([uuid], since, until) == pytest.approx(
            full.busy_fraction([uuid], since, until), abs=1e-6
        )
        a, b = pruned.usage(since, until).by_user["alice"], full.usage(since, until).by_user["alice"]
        assert a.gpu_hours_busy == pytest.approx(b.gpu_hours_busy, rel=1e-6)
        assert a.gpu_hours_in_use == pytest.approx(b.gpu_hours_in_use, rel=1e-6)


def test_rollups_resume_after_a_poller_restart_without_double_counting(tmp_path, ledger_db):
    url = ledger_db
    reading = [GpuReading(uuid="GPU-r", index=0, utilization_gpu=50, processes=(ProcessReading(7, 100, 50),))]
    attributor = alice_attributor(tmp_path / "proc", [7])
    first = Poller(ScriptedSource([reading]), TelemetryDB(url), attributor, interval_s=5)
    for i in range(12 * 30):  # 30 minutes
        first.tick(START + i * 5)
    second = Poller(ScriptedSource([reading]), TelemetryDB(url), attributor, interval_s=5)
    for i in range(12 * 30, 12 * 70):  # restarted, runs past the hour
        second.tick(START + i * 5)
    db = TelemetryDB(url)
    with db.reader.connect() as conn:
        hour = conn.execute(GPU_ROLLUP.select().where(GPU_ROLLUP.c.resolution == 3600)).all()
    assert len(hour) == 1 and hour[0].seconds == pytest.approx(3600) and hour[0].busy_s == pytest.approx(1800)
    assert db.busy_fraction(["GPU-r"], START, START + 3600) == pytest.approx(0.5)


def test_unhealthy_gpus_are_recorded_for_the_allocator_and_cleared_on_recovery(ledger_db):
    db = TelemetryDB(ledger_db)
    ok = GpuReading(uuid="GPU-ok", index=0, utilization_gpu=0)
    lost = GpuReading(uuid="GPU-bad", index=1, error="Unknown Error")
    back = GpuReading(uuid="GPU-bad", index=1, utilization_gpu=0)
    poller = Poller(ScriptedSource([[ok, lost], [ok, back]]), db, ProcessAttributor(None), interval_s=1)
    poller.tick(START)
    problems = db.unhealthy_gpus()
    assert list(problems) == ["GPU-bad"] and "Unknown Error" in problems["GPU-bad"] and "GPU 1" in problems["GPU-bad"]
    # A fresh store on the same file (the hub reading it) sees the same.
    assert TelemetryDB(ledger_db).unhealthy_gpus() == problems
    poller.tick(START + 1)
    assert db.unhealthy_gpus() == {}


def test_labgpu_poller_once_with_a_replay_source(tmp_path, capsys, ledger_db):
    db_url = ledger_db
    rc = labgpu_main(
        [
            "poller",
            "--db",
            db_url,
            "--source",
            f"replay:{H100_TRACE}",
            "--once",
            "--labels",
            "none",
            "--proc-root",
            str(tmp_path),
        ]
    )
    assert rc == 0
    assert "1 GPU, " in capsys.readouterr().out
    with TelemetryDB(db_url).reader.connect() as conn:
        assert len(conn.execute(GPU_SAMPLE.select()).all()) == 1


def test_labgpu_poller_refuses_a_too_short_interval_and_a_bad_trace(tmp_path, capsys):
    with pytest.raises(SystemExit):
        labgpu_main(["poller", "--interval", "0.2", "--once"])
    assert "--interval must be >= 1 s" in capsys.readouterr().err
    rc = labgpu_main(
        [
            "poller",
            "--db",
            f"sqlite:///{tmp_path / 'x.sqlite'}",
            "--source",
            f"replay:{tmp_path / 'none.json'}",
            "--once",
            "--labels",
            "none",
        ]
    )
    assert rc == 2


def test_telemetry_tables_live_beside_the_ledger_in_one_database(ledger_db):
    from labgpu.db.ledger import Ledger

    path = ledger_db
    with Ledger(path) as ledger:
        db = TelemetryDB(path)
        poller = Poller(
            ScriptedSource([[GpuReading(uuid="GPU-l", index=0, utilization_gpu=40)]]),
            db,
            ProcessAttributor(None),
            interval_s=5,
        )
        for i in range(30):
            poller.tick(START + i * 5)
        assert ledger.allocations() == []  # the ledger still opens and reads its own tables
    with Ledger(path) as reopened:  # and migrations still find the schema they expect
        assert reopened.allocations() == []
    assert TelemetryDB(path).busy_fraction(["GPU-l"], START, START + 150) == pytest.approx(0.4)


def test_the_poller_process_runs_until_sigterm_and_leaves_its_samples(tmp_path, ledger_db):
    import os
    import signal
    import subprocess
    import sys
    import time

    from labgpu.db.engine import is_postgresql

    db_url = ledger_db
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "labgpu.cli",
            "poller",
            "--db",
            db_url,
            "--source",
            f"replay:{H100_TRACE}",
            "--interval",
            "1",
            "--labels",
            "none",
            "--proc-root",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        deadline = time.monotonic() + 20
        rows = 0
        while time.monotonic() < deadline and rows < 3:
            time.sleep(0.5)
            if is_postgresql(db_url) or (tmp_path / "ledger.sqlite").exists():
                with TelemetryDB(db_url).reader.connect() as conn:
                    rows = len(conn.execute(GPU_SAMPLE.select()).all())
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert rows >= 3, output
    assert process.returncode == 0, output
    assert "GPU telemetry: replay:" in output and "Traceback" not in output
