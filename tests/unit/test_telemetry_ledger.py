"""The telemetry merged into the ledger: one Alembic history with one head creates every table
exactly as the metadata declares it, the poller's health verdicts reach the allocator through Ledger.set_gpu_health, and
`labgpu poller` finds the hub's ledger and survives a host without NVIDIA driver."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from labgpu.cli.main import main as labgpu_main
from labgpu.db.engine import MIGRATIONS_DIR, VERSION_TABLE, alembic_config
from labgpu.db.ledger import Ledger
from labgpu.db.tables import Base
from labgpu.db.telemetry_store import GPU_SAMPLE, TelemetryDB
from labgpu.gpus.allocator import NotEnoughGpus
from labgpu.gpus.inventory import Gpu
from labgpu.gpus.telemetry import CONTAINER, WORKSPACE, GpuReading
from labgpu.labels import LABEL_HUB, LABEL_SERVER, LABEL_USER
from labgpu.services.attribution import ProcessAttributor, workspace_labels
from labgpu.services.poller import Poller, open_with_backoff

DATA = Path(__file__).resolve().parent.parent / "data"
H100_TRACE = DATA / "nvml-1xh100-load.json"
START = 1_800_000_000.0
GIB = 1 << 30


class ScriptedSource:
    def __init__(self, ticks):
        self.ticks = list(ticks)

    def read(self):
        return self.ticks.pop(0) if len(self.ticks) > 1 else self.ticks[0]

    def close(self):
        pass


def two_gpus() -> list[Gpu]:
    return [Gpu("GPU-ok", 0, "NVIDIA H100 80GB HBM3", 80 * GIB), Gpu("GPU-bad", 1, "NVIDIA H100 80GB HBM3", 80 * GIB)]


OK = GpuReading(uuid="GPU-ok", index=0, utilization_gpu=0)
LOST = GpuReading(uuid="GPU-bad", index=1, error="Unknown Error")
BACK = GpuReading(uuid="GPU-bad", index=1, utilization_gpu=0)


# ---- one schema, one history ------------------------------------------------------------------


def test_migrations_have_one_head_and_a_fresh_ledger_file_is_at_it(tmp_path):
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, f"{MIGRATIONS_DIR}/versions has several heads {heads}: chain the newest after the other"
    TelemetryDB(f"sqlite:///{tmp_path / 'fresh.sqlite'}").close()  # the poller opening first
    with sqlite3.connect(tmp_path / "fresh.sqlite") as db:
        assert db.execute("SELECT version_num FROM labgpu_alembic_version").fetchall() == [(heads[0],)]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        # the ledger's own tables came with it: the poller and the hub share one file and one history
        assert {"gpus", "allocations", "telemetry_gpu_sample", "telemetry_owner_rollup", "telemetry_state"} <= tables
        create = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type='table'").fetchall())
        assert "WITHOUT ROWID" in create["telemetry_gpu_sample"] and "WITHOUT ROWID" in create["telemetry_owner_rollup"]


def schema_drift(conn: Connection) -> list:
    """Every difference between the tables' metadata and this database: tables, columns, types,
    nullability, indexes and unique constraints (Alembic's autogenerate comparison), and primary
    keys (which Alembic does not compare)."""
    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
    drift = list(compare_metadata(context, Base.metadata))
    migrated = inspect(conn)
    for table in Base.metadata.sorted_tables:
        if migrated.has_table(table.name):
            keys = migrated.get_pk_constraint(table.name)["constrained_columns"]
            if keys != [column.name for column in table.primary_key]:
                drift.append(("primary key", table.name, keys, [column.name for column in table.primary_key]))
    return drift


def test_a_database_migrated_to_head_has_every_table_column_index_and_key_of_the_metadata(ledger_db):
    with Ledger(ledger_db) as ledger, ledger.reader.connect() as conn:  # SQLite and PostgreSQL alike
        assert schema_drift(conn) == []
    # the ledger's 4 and its state, queue and notices, sessions, telemetry's 7, volume sizes, ssh keys,
    # workspace ids, hub events
    assert len(Base.metadata.tables) == 19


def test_the_schema_check_sees_what_a_migration_forgot_in_any_table(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as ledger, ledger.writer.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE sessions DROP COLUMN torch_version")
        conn.exec_driver_sql("DROP INDEX ix_gpu_queue_status")
        drift = schema_drift(conn)
    assert [(d[2], d[3].name) for d in drift if d[0] == "add_column"] == [("sessions", "torch_version")]
    assert [d[1].name for d in drift if d[0] == "add_index"] == ["ix_gpu_queue_status"]


def test_importing_any_database_module_loads_every_table():
    """The metadata is whole whichever module a process imports first (Alembic's env.py, a CLI
    command, the poller): no table is missing from a schema check or an autogenerated migration."""
    for module in ("labgpu.db.engine", "labgpu.db.session_store", "labgpu.db.migrations"):
        script = f"import sys, {module}; print(sorted(sys.modules['labgpu.db.tables'].Base.metadata.tables))"
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        assert out.strip() == str(sorted(Base.metadata.tables)), module


# ---- health: the poller's verdict reaches the allocator ---------------------------------------


def test_a_gpu_the_poller_marks_unhealthy_is_refused_and_granted_again_after_recovery(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        ledger.sync_inventory(two_gpus())
        poller = Poller(
            ScriptedSource([[OK, LOST], [OK, LOST], [OK, BACK]]),
            TelemetryDB(f"sqlite:///{path}"),
            ProcessAttributor(None),
            interval_s=1,
            on_health_change=ledger.set_gpu_health,
        )
        poller.tick(START)
        with pytest.raises(NotEnoughGpus) as refused:
            ledger.allocate("alice", n=2)
        assert "unhealthy" in str(refused.value)
        assert ledger.allocate("bob", n=1).gpu_uuids == ("GPU-ok",)
        with pytest.raises(NotEnoughGpus):
            ledger.allocate("carol", n=1)  # the only GPU left is the broken one
        bad = next(h.gpu for h in ledger.holdings() if h.gpu.uuid == "GPU-bad")
        assert not bad.healthy and "Unknown Error" in bad.health_reason and "GPU 1" in bad.health_reason
        # The hub restarts and records its inventory (NVML said healthy then): still refused.
        ledger.sync_inventory(two_gpus())
        with pytest.raises(NotEnoughGpus):
            ledger.allocate("carol", n=1)
        poller.tick(START + 1)
        poller.tick(START + 2)  # recovered
        assert ledger.allocate("carol", n=1).gpu_uuids == ("GPU-bad",)
        assert all(h.gpu.healthy for h in ledger.holdings())


def test_a_server_holding_a_gpu_that_fails_gets_other_gpus_on_its_next_spawn(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.sync_inventory(two_gpus())
        assert ledger.allocate("alice", n=1).gpu_uuids == ("GPU-ok",)
        ledger.set_gpu_health("GPU-ok", "GPU 0 (GPU-ok): GPU is lost")
        # A retried spawn asking the same does not get the broken GPU back.
        assert ledger.allocate("alice", n=1).gpu_uuids == ("GPU-bad",)


def test_a_restarted_poller_clears_what_an_earlier_run_left_when_the_gpu_is_fine_now(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        ledger.sync_inventory(two_gpus())
        ledger.set_gpu_health("GPU-bad", "GPU 1 (GPU-bad): Unknown Error")  # left by a poller that died
        fresh = Poller(
            ScriptedSource([[OK, BACK]]),
            TelemetryDB(f"sqlite:///{path}"),
            ProcessAttributor(None),
            interval_s=1,
            on_health_change=ledger.set_gpu_health,
        )
        fresh.tick(START)
        assert ledger.allocate("alice", n=2).gpu_uuids == ("GPU-ok", "GPU-bad")


def test_a_problem_seen_before_the_hub_lists_the_gpu_holds_once_it_does(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.set_gpu_health("GPU-bad", "GPU 1 (GPU-bad): Unknown Error")  # the poller started first
        assert ledger.holdings() == []  # a placeholder, not a GPU anyone can be given
        ledger.sync_inventory(two_gpus())
        with pytest.raises(NotEnoughGpus):
            ledger.allocate("alice", n=2)
        ledger.set_gpu_health("GPU-bad", None)
        assert len(ledger.allocate("alice", n=2).gpu_uuids) == 2


# ---- the command ----------------------------------------------------------------------------


def test_labgpu_poller_writes_into_the_hubs_ledger_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LABGPU_LEDGER", raising=False)
    monkeypatch.setenv("LABGPU_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LABGPU_DB_URL", f"sqlite:///{tmp_path / 'jupyterhub.sqlite'}")  # JupyterHub's, not ours
    rc = labgpu_main(
        ["poller", "--source", f"replay:{H100_TRACE}", "--once", "--labels", "none", "--proc-root", str(tmp_path)]
    )
    assert rc == 0 and "1 GPU, " in capsys.readouterr().out
    assert not (tmp_path / "jupyterhub.sqlite").exists()
    with TelemetryDB(str(tmp_path / "state" / "ledger.sqlite")).reader.connect() as conn:
        assert len(conn.execute(GPU_SAMPLE.select()).all()) == 1
    monkeypatch.setenv("LABGPU_LEDGER", str(tmp_path / "elsewhere.sqlite"))
    assert (
        labgpu_main(
            ["poller", "--source", f"replay:{H100_TRACE}", "--once", "--labels", "none", "--proc-root", str(tmp_path)]
        )
        == 0
    )
    assert (tmp_path / "elsewhere.sqlite").exists()


def test_only_this_hubs_containers_are_attributed_to_users(tmp_path):
    cids = {"ours": "a" * 64, "other_hub": "b" * 64, "plain": "c" * 64}
    labels = {
        cids["ours"]: {LABEL_HUB: "labgpu", LABEL_USER: "alice", LABEL_SERVER: "gpu"},
        cids["other_hub"]: {LABEL_HUB: "staging", LABEL_USER: "mallory", LABEL_SERVER: ""},
        cids["plain"]: {"com.example": "x"},
    }
    for pid, cid in enumerate(cids.values(), start=10):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text(f"0::/system.slice/docker-{cid}.scope\n")
    attributor = ProcessAttributor(lambda cid: workspace_labels(labels[cid], "labgpu"), tmp_path)
    owners = [attributor.owner_of(pid) for pid in (10, 11, 12)]
    assert (owners[0].kind, owners[0].user, owners[0].server) == (WORKSPACE, "alice", "gpu")
    assert [(o.kind, o.user) for o in owners[1:]] == [(CONTAINER, ""), (CONTAINER, "")]


# ---- a host without NVIDIA driver -------------------------------------------------------------


def test_nvml_failing_for_hours_logs_one_error_and_a_reminder_an_hour_not_a_line_a_minute(caplog):
    attempts, waits = [], []

    def open_source():
        attempts.append(1)
        if len(attempts) < 200:
            raise RuntimeError("NVML Shared Library Not Found")
        return ScriptedSource([])

    with caplog.at_level(logging.DEBUG, logger="labgpu.services.poller"):
        assert open_with_backoff(open_source, sleep=waits.append) is not None
    assert waits[:7] == [1, 2, 4, 8, 16, 32, 60] and max(waits) == 60  # backoff, capped at a minute
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "NVML Shared Library Not Found" in errors[0] and "NVIDIA driver" in errors[0]
    hours = sum(waits) / 3600
    reminders = [r for r in caplog.records if r.levelno == logging.WARNING and "Still cannot" in r.getMessage()]
    assert hours > 3 and 1 <= len(reminders) <= hours + 1
    assert "started after 200 attempts" in caplog.records[-1].getMessage()


def test_a_changed_error_is_logged_again():
    errors = iter([OSError("driver/library version mismatch")] * 3 + [OSError("NVML Shared Library Not Found")])
    lines = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.ERROR:
                lines.append(record.getMessage())

    handler = Collect()
    logging.getLogger("labgpu.services.poller").addHandler(handler)
    try:

        def open_source():
            error = next(errors, None)
            if error:
                raise error
            return ScriptedSource([])

        open_with_backoff(open_source, sleep=lambda s: None)
    finally:
        logging.getLogger("labgpu.services.poller").removeHandler(handler)
    assert [line.split(":")[1].strip()[:20] for line in lines] == ["driver/library versi", "NVML Shared Library "]


def test_the_poller_service_on_a_host_without_nvidia_driver_waits_quietly_and_stops_on_sigterm(tmp_path):
    """The real command with the real NVML bindings on this (driverless) machine, as a managed
    service would run it: it must neither exit (JupyterHub would restart it at once) nor flood
    the log, and SIGTERM must end it cleanly."""
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    except pynvml.NVMLError:
        pass
    process = subprocess.Popen(
        [sys.executable, "-m", "labgpu.cli", "poller", "--db", str(tmp_path / "ledger.sqlite"), "--labels", "none"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    watchdog = threading.Timer(90, process.kill)  # a hung poller fails the test, never hangs it
    watchdog.start()
    try:
        # Its first line says it cannot start (it is up, its SIGTERM handler set, however loaded
        # the machine is); then a few more attempts (at 1 and 3 s) must stay quiet.
        first = process.stdout.readline() if process.stdout else ""
        time.sleep(4)
        assert process.poll() is None, "the poller exited: a managed service would be restarted in a loop"
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=20)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
    output = first + rest
    assert process.returncode == 0, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and "ERROR" in lines[0] and "Cannot start GPU telemetry" in lines[0], output
    assert "Is the NVIDIA driver loaded" in lines[0] and "Traceback" not in output
