"""Backups of the hub's state that are consistent while the hub runs, and their restore.

What the state is: JupyterHub's database, the GPU ledger (both SQLite files, in WAL mode) and
the other files of the state directory (the cookie secret, keys other parts keep there). Each
SQLite file is copied with SQLite's online backup API in one step: a read transaction, so the
copy is one consistent moment of that database while the hub and its services go on writing
(WAL readers do not block writers). A plain `cp` of a WAL database can miss the transactions
still in its -wal file, or copy half of a checkpoint. The two databases are copied one after
the other, not at one instant; the hub reconciles the ledger with Docker when it starts, which
settles a spawn or stop that fell between them.

A backup is a directory: the copies (each a self-contained SQLite file, journal mode DELETE),
the files, and ``labgpu-backup.json`` (what each file is, where it came from, its SHA-256, its
mode, and the row count of every table). Restoring checks all of that before it writes anything,
writes each database through the backup API again (never a file copy over a live WAL), and each
file by an atomic rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

MANIFEST = "labgpu-backup.json"
STATE_PREFIX = "state"  # the state directory's other files are under state/ in a backup
FORMAT = 1
SQLITE_MAGIC = b"SQLite format 3\x00"
# Files of the state directory a backup leaves out: a running process's pid, SQLite's journals
# (the backup API takes their content), half-written files.
SKIPPED_SUFFIXES = (".pid", "-wal", "-shm", "-journal", ".new", ".tmp")


class BackupError(RuntimeError):
    """A backup or restore that cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class Database:
    """A SQLite database of the hub: its role in the backup and where it lives."""

    role: str  # "hub-db", "ledger"
    path: Path


@dataclass(frozen=True)
class Entry:
    """One file of a backup."""

    name: str  # relative path inside the backup directory
    kind: str  # "sqlite" or "file"
    role: str  # "hub-db", "ledger" or "state" (a file of the state directory, at `name`)
    sha256: str
    size: int
    mode: int
    tables: dict[str, int]  # sqlite only: rows per table

    def to_json(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in ("name", "kind", "role", "sha256", "size", "mode", "tables")}


def sqlite_path(url_or_path: str, what: str) -> Path:
    """The file a ``sqlite:///...`` URL (or a plain path) names; BackupError for other databases."""
    if "://" not in url_or_path:
        return Path(url_or_path).resolve()
    scheme, _, rest = url_or_path.partition("://")
    if scheme.split("+")[0] != "sqlite" or not rest.startswith("/") or rest in ("/", "/:memory:"):
        raise BackupError(
            f"{what} is {url_or_path.split('@')[-1]!r}, not a SQLite file: back it up with that database's "
            "own tools (pg_dump for PostgreSQL); `labgpu backup` copies SQLite databases and the state directory"
        )
    return Path(rest[1:].split("?")[0]).resolve()


def is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _table_rows(connection: sqlite3.Connection) -> dict[str, int]:
    names = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    return {name: connection.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}


def _check_integrity(connection: sqlite3.Connection, what: str) -> None:
    result = [r[0] for r in connection.execute("PRAGMA integrity_check")]
    if result != ["ok"]:
        raise BackupError(f"{what} fails SQLite's integrity check: {'; '.join(result[:5])}")


def copy_database(source: Path, target: Path) -> dict[str, int]:
    """Copy the SQLite database ``source`` to the new file ``target`` with the online backup API,
    in one step (one consistent snapshot), as a self-contained file; return its tables' row counts."""
    src = sqlite3.connect(source, timeout=30)  # read only by what it does (a WAL reader needs the -shm)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)  # pages=-1: the whole database under one read transaction
        dst.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal beside it
        _check_integrity(dst, f"the copy of {source}")
        return _table_rows(dst)
    finally:
        dst.close()
        src.close()


def _state_files(state_dir: Path, databases: Iterable[Path]) -> Iterator[Path]:
    """The regular files of the state directory a backup keeps (relative paths), databases aside."""
    skip = {p.resolve() for p in databases}
    for path in sorted(state_dir.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.resolve() in skip:
            continue
        if path.name.endswith(SKIPPED_SUFFIXES):
            continue
        yield path.relative_to(state_dir)


def backup(state_dir: Path, databases: list[Database], target: Path) -> list[Entry]:
    """Back the hub's state up into the new directory ``target`` (made atomically: it appears
    complete or not at all). Other SQLite files of the state directory are copied with the backup
    API too; every other file as it is."""
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"{target} exists and is not empty: give a new directory (e.g. with the date in its name)")
    missing = [f"{db.role} {db.path}" for db in databases if not db.path.is_file()]
    if missing:
        raise BackupError(f"nothing to back up at {', '.join(missing)}: is this the hub's state (LABGPU_STATE_DIR)?")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        entries = []
        for db in databases:
            name = f"{db.role}.sqlite"
            entries.append(_backed_up(work, name, "sqlite", db.role, copy_database(db.path, work / name), db.path))
        for relative in _state_files(state_dir, [db.path for db in databases]):
            source, name = state_dir / relative, f"{STATE_PREFIX}/{relative}"
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            if is_sqlite(source):
                entries.append(_backed_up(work, name, "sqlite", "state", copy_database(source, work / name), source))
            else:
                shutil.copyfile(source, work / name)
                entries.append(_backed_up(work, name, "file", "state", {}, source))
        manifest = {
            "format": FORMAT,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "state_dir": str(state_dir),
            "files": [e.to_json() for e in entries],
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        for path in (work, *work.rglob("*")):
            _fsync(path)
        if target.exists():
            target.rmdir()  # empty, checked above
        work.rename(target)
        return entries
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _backed_up(work: Path, name: str, kind: str, role: str, tables: dict[str, int], source: Path) -> Entry:
    copy = work / name
    mode = source.stat().st_mode & 0o777
    copy.chmod(mode)
    return Entry(name, kind, role, _sha256(copy), copy.stat().st_size, mode, tables)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(source: Path) -> list[Entry]:
    """The entries of the backup in ``source``, each checked (present, same SHA-256, a sound
    SQLite file); BackupError naming the first problem."""
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{source} is not a backup made by `labgpu backup` (no {MANIFEST})") from None
    except (OSError, ValueError) as e:
        raise BackupError(f"{source / MANIFEST} cannot be read: {e}") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{source} is a backup of format {manifest.get('format')!r}; this labgpu reads {FORMAT}")
    try:
        entries = [
            Entry(str(f["name"]), f["kind"], f["role"], f["sha256"], int(f["size"]), int(f["mode"]), dict(f["tables"]))
            for f in manifest["files"]
        ]
    except (KeyError, TypeError, ValueError) as e:
        raise BackupError(f"{source / MANIFEST} is not a labgpu backup manifest ({type(e).__name__}: {e})") from None
    for entry in entries:
        path = source / entry.name
        name = Path(entry.name)
        inside = not name.is_absolute() and ".." not in name.parts and bool(name.parts)
        in_state = inside and name.parts[0] == STATE_PREFIX
        if not inside or entry.kind not in ("sqlite", "file") or (entry.role == "state") != in_state:
            raise BackupError(f"{source / MANIFEST} names {entry.name!r} ({entry.role}), which a backup cannot hold")
        if not path.is_file():
            raise BackupError(f"{path} is missing from the backup")
        if _sha256(path) != entry.sha256:
            raise BackupError(f"{path} has changed since the backup was made (its SHA-256 differs)")
        if entry.kind == "sqlite":
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
                _check_integrity(connection, str(path))
    return entries


def restore(source: Path, state_dir: Path, databases: list[Database], *, force: bool = False) -> list[Entry]:
    """Put the backup in ``source`` back: the hub's database and the ledger where ``databases``
    say they live now, the other files into ``state_dir``. Refuses to replace existing databases
    unless ``force`` (stop the hub first: a running hub keeps what it read in memory)."""
    entries = read_manifest(source)
    where = {db.role: db.path for db in databases}
    targets = [(e, where.get(e.role) or state_dir / Path(e.name).relative_to(STATE_PREFIX)) for e in entries]
    existing = [str(path) for e, path in targets if e.kind == "sqlite" and path.exists()]
    if existing and not force:
        raise BackupError(
            f"{', '.join(existing)} already exist: restoring replaces them. Stop the hub "
            "(docker-compose stop hub, or systemctl stop labgpu-hub) and run again with --force"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    for entry, path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        if entry.kind == "sqlite":
            # Through SQLite, so an existing database's -wal/-shm stay consistent with it.
            src = sqlite3.connect(f"file:{source / entry.name}?mode=ro", uri=True)
            dst = sqlite3.connect(path, timeout=30)
            try:
                src.backup(dst)
            finally:
                dst.close()
                src.close()
        else:
            partial = path.with_name(path.name + ".new")
            shutil.copyfile(source / entry.name, partial)
            partial.chmod(entry.mode)
            partial.replace(path)
        path.chmod(entry.mode)
    return entries
