"""`labgpu backup` / `labgpu restore`: consistent copies of WAL databases being written, and a
restore that checks everything before it writes."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from labgpu.cli.main import main
from labgpu.db.backup import MANIFEST, BackupError, Database, backup, read_manifest, restore, sqlite_path


def make_db(path: Path, rows: int) -> None:
    with sqlite3.connect(path) as c:
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, a INTEGER, b INTEGER)")
        c.executemany("INSERT INTO t (a, b) VALUES (?, ?)", [(i, -i) for i in range(rows)])


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    make_db(state / "jupyterhub.sqlite", 10)
    make_db(state / "ledger.sqlite", 20)
    (state / "cookie_secret").write_text("ab" * 32)
    (state / "cookie_secret").chmod(0o600)
    (state / "keys").mkdir()
    (state / "keys" / "host_key").write_text("key")
    (state / "proxy.pid").write_text("123")
    return state


def databases(state: Path) -> list[Database]:
    return [Database("hub-db", state / "jupyterhub.sqlite"), Database("ledger", state / "ledger.sqlite")]


def rows(path: Path) -> list[tuple[int, int, int]]:
    with sqlite3.connect(path) as c:
        return c.execute("SELECT * FROM t ORDER BY id").fetchall()


def test_backup_holds_every_database_and_file_but_pids_and_journals(state, tmp_path):
    entries = backup(state, databases(state), tmp_path / "b")
    names = sorted(e.name for e in entries)
    assert names == ["hub-db.sqlite", "ledger.sqlite", "state/cookie_secret", "state/keys/host_key"]
    assert not list((tmp_path / "b").glob("*-wal"))
    assert rows(tmp_path / "b" / "ledger.sqlite") == rows(state / "ledger.sqlite")
    with sqlite3.connect(tmp_path / "b" / "ledger.sqlite") as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # self-contained
    assert (tmp_path / "b" / "state" / "cookie_secret").stat().st_mode & 0o777 == 0o600
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    assert {f["name"]: f["tables"] for f in manifest["files"]}["ledger.sqlite"] == {"t": 20}


def test_backup_while_a_writer_commits_is_one_consistent_moment(state, tmp_path):
    """Every transaction writes a row and updates all others (a+1, b-1): a torn copy would show
    rows that disagree about how many transactions they have seen."""
    ledger = state / "ledger.sqlite"
    stop = threading.Event()

    def writer() -> None:
        with sqlite3.connect(ledger, timeout=30) as c:
            while not stop.is_set():
                c.execute("UPDATE t SET a = a + 1, b = b - 1")
                c.execute("INSERT INTO t (a, b) VALUES (0, 0)")
                c.commit()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for i in range(5):
            backup(state, databases(state), tmp_path / f"b{i}")
    finally:
        stop.set()
        thread.join()
    for i in range(5):
        copied = rows(tmp_path / f"b{i}" / "ledger.sqlite")
        assert all(a + b == 0 for _, a, b in copied[:20])  # the first rows: a = i + n, b = -(i + n)
        n = len(copied) - 20  # transactions the copy saw
        assert [a for _, a, _ in copied[20:]] == list(range(n - 1, -1, -1))


def test_restore_into_an_empty_state_gives_the_same_state(state, tmp_path):
    backup(state, databases(state), tmp_path / "b")
    fresh = tmp_path / "fresh"
    restore(tmp_path / "b", fresh, databases(fresh))
    assert rows(fresh / "ledger.sqlite") == rows(state / "ledger.sqlite")
    assert rows(fresh / "jupyterhub.sqlite") == rows(state / "jupyterhub.sqlite")
    assert (fresh / "cookie_secret").read_text() == "ab" * 32
    assert (fresh / "cookie_secret").stat().st_mode & 0o777 == 0o600
    assert (fresh / "keys" / "host_key").read_text() == "key"
    assert not (fresh / "proxy.pid").exists()


def test_restore_replaces_existing_databases_only_with_force(state, tmp_path):
    backup(state, databases(state), tmp_path / "b")
    make_db(state / "ledger.sqlite", 5)  # changed after the backup
    with pytest.raises(BackupError, match=r"ledger.sqlite already exist: restoring replaces them. Stop the hub .*"):
        restore(tmp_path / "b", state, databases(state))
    restore(tmp_path / "b", state, databases(state), force=True)
    assert len(rows(state / "ledger.sqlite")) == 20


def test_a_changed_or_incomplete_backup_is_refused_before_anything_is_written(state, tmp_path):
    backup(state, databases(state), tmp_path / "b")
    (tmp_path / "b" / "state" / "cookie_secret").write_text("tampered")
    with pytest.raises(BackupError, match=r"cookie_secret has changed since the backup was made"):
        read_manifest(tmp_path / "b")
    (tmp_path / "b" / "ledger.sqlite").unlink()
    fresh = tmp_path / "fresh"
    with pytest.raises(BackupError, match=r"ledger.sqlite is missing from the backup"):
        restore(tmp_path / "b", fresh, databases(fresh))
    assert not fresh.exists()
    with pytest.raises(BackupError, match=r"not a backup made by `labgpu backup`"):
        read_manifest(tmp_path)


def test_a_manifest_cannot_write_outside_the_state_directory(state, tmp_path):
    backup(state, databases(state), tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    manifest["files"][-1]["name"] = "state/../../evil"
    (tmp_path / "b" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match=r"names 'state/../../evil' \(state\), which a backup cannot hold"):
        read_manifest(tmp_path / "b")


def test_backup_refuses_a_used_directory_and_a_missing_state(state, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    with pytest.raises(BackupError, match=r"exists and is not empty"):
        backup(state, databases(state), tmp_path / "used")
    empty = tmp_path / "empty"
    with pytest.raises(BackupError, match=r"nothing to back up at hub-db .*LABGPU_STATE_DIR"):
        backup(empty, databases(empty), tmp_path / "b")


def test_a_database_that_is_not_sqlite_says_to_use_its_own_tools():
    assert sqlite_path("sqlite:////srv/state/hub.sqlite", "x") == Path("/srv/state/hub.sqlite")
    with pytest.raises(BackupError, match=r"'db:5432/hub', not a SQLite file: .*pg_dump"):
        sqlite_path("postgresql+psycopg://user:secret@db:5432/hub", "JupyterHub's database")


def test_the_cli_backs_up_and_restores_with_the_hubs_environment(state, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LABGPU_STATE_DIR", str(state))
    monkeypatch.delenv("LABGPU_DB_URL", raising=False)
    monkeypatch.delenv("LABGPU_LEDGER", raising=False)
    assert main(["backup", str(tmp_path / "b")]) == 0
    assert "  ledger.sqlite                ledger       8,192 bytes  1 tables, 20 rows" in capsys.readouterr().out
    monkeypatch.setenv("LABGPU_STATE_DIR", str(tmp_path / "fresh"))
    assert main(["restore", str(tmp_path / "b")]) == 0
    assert rows(tmp_path / "fresh" / "ledger.sqlite") == rows(state / "ledger.sqlite")
    assert main(["restore", str(tmp_path / "b")]) == 1
    assert "already exist" in capsys.readouterr().err
