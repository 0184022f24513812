"""The database plumbing every store shares: engines on SQLite or PostgreSQL, Alembic
migrations to ``head``, and :class:`Store`, the skeleton each store is built on (its engines, its
clock, close).

The database is chosen by its URL: a plain path (or ``sqlite:///...``) is an SQLite file,
``postgresql://...`` a PostgreSQL database (driven by psycopg 3). Either way every write is one
transaction that first takes the database's own exclusive lock, so writers in several processes
(hubs, CLI, poller, reclaimer) are serialized by the database and a read-then-write never races:

- SQLite, in WAL mode: ``BEGIN IMMEDIATE`` (the file's write lock).
- PostgreSQL: ``pg_advisory_xact_lock(key)`` as the transaction's first statement, at READ
  COMMITTED, so each later statement sees every write committed before the lock was granted.
  The lock is the transaction's: commit, rollback or a dead client (its connection gone) frees
  it, so a killed process holds nothing. The ledger's stores share one key; telemetry, written
  by pollers every tick, has its own, so a tick never waits for a grant nor a grant for a tick.

Readers see one snapshot per transaction on both (SQLite's deferred ``BEGIN``, PostgreSQL's
REPEATABLE READ). Migrations are Alembic's (``labgpu/db/migrations``), the same scripts on both,
with their own version table so the database can be JupyterHub's too; a store that opens a
database migrates it first.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy import CursorResult, Engine, Table, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.engine.interfaces import DBAPICursor

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "MIGRATIONS_DIR",
    "VERSION_TABLE",
    "Clock",
    "Store",
    "alembic_config",
    "database_url",
    "head_revision",
    "inserted_id",
    "is_postgresql",
    "ledger_engine",
    "lock_key",
    "sqlite_url",
    "upgrade_to_head",
    "upsert",
    "utc_now",
]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Our own Alembic version table, so the ledger can share a database with JupyterHub's.
VERSION_TABLE = "labgpu_alembic_version"

Clock = Callable[[], datetime]
"""What a store asks for the time: aware UTC datetimes (tests inject a fake one)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


# ============================================================================================
# Engines: chosen by URL; SQLite (WAL, BEGIN IMMEDIATE) or PostgreSQL (advisory transaction lock)
# ============================================================================================

LEDGER_LOCK = "ledger"  # the ledger, the queue, sessions, volume sizes: one writer at a time
TELEMETRY_LOCK = "telemetry"  # the pollers' samples and rollups
_MIGRATION_LOCK = "migrations"


def database_url(url_or_path: str | Path) -> str:
    """An SQLAlchemy URL: a file path as an absolute ``sqlite:///`` URL, ``postgresql://`` (or
    ``postgres://``) as psycopg 3's ``postgresql+psycopg://``, any other URL as given."""
    text = str(url_or_path)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser().resolve()}"
    url = make_url(text)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


sqlite_url = database_url  # its name before PostgreSQL; a path still means an SQLite file


def is_postgresql(url_or_path: str | Path) -> bool:
    """Does this URL name a PostgreSQL database (else SQLite)?"""
    return make_url(database_url(url_or_path)).get_backend_name() == "postgresql"


def lock_key(name: str) -> int:
    """The PostgreSQL advisory lock key (a signed 64-bit number) of a lock domain's name."""
    return int.from_bytes(hashlib.sha256(f"labgpu:{name}".encode()).digest()[:8], "big", signed=True)


def ledger_engine(
    url_or_path: str | Path,
    *,
    immediate: bool = True,
    busy_timeout_ms: int = 30_000,
    lock: str = LEDGER_LOCK,
    autocheckpoint: bool = True,
) -> Engine:
    """An engine on the database whose transactions, for writers (``immediate``), start by
    taking the database's exclusive ``lock`` (see the module's docstring), so that
    read-then-write cannot race; readers read one snapshot per transaction. SQLite without
    ``autocheckpoint``: its commits never checkpoint the WAL (a :class:`WalCheckpointer` does)."""
    url = make_url(database_url(url_or_path))
    if url.get_backend_name() == "postgresql":
        return _postgresql_engine(url.render_as_string(hide_password=False), immediate, busy_timeout_ms, lock)
    if url.get_backend_name() != "sqlite":
        raise ValueError(f"the ledger runs on SQLite or PostgreSQL, not {url.get_backend_name()} ({url!r})")
    database = url.database or ""
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event decide how transactions start (pysqlite would not).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # In WAL mode NORMAL survives a crash of the hub; only a power cut can lose the last
        # commits, and then the containers are gone too (reconcile on start repairs the rest).
        cursor.execute("PRAGMA synchronous=NORMAL")
        if not autocheckpoint:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _session_settings(busy_timeout_ms: int) -> dict[str, int]:
    """Each PostgreSQL session's settings: how long to wait for the lock, and how soon the server
    gives up on a client that stalls inside a transaction or whose machine vanished (its
    transaction ends and its lock with it: a dead hub holds nothing after about a minute)."""
    return {
        "lock_timeout": int(busy_timeout_ms),
        "idle_in_transaction_session_timeout": 60_000,
        "tcp_keepalives_idle": 30,
        "tcp_keepalives_interval": 10,
        "tcp_keepalives_count": 3,
    }


def _postgresql_engine(url: str, immediate: bool, busy_timeout_ms: int, lock: str) -> Engine:
    # READ COMMITTED for writers: each statement after the lock sees what was committed before
    # it was granted (a REPEATABLE READ snapshot could predate the lock). A lock wait longer
    # than the busy timeout fails the transaction, as SQLite's busy timeout does.
    options = " ".join(f"-c {name}={value}" for name, value in _session_settings(busy_timeout_ms).items())
    engine = create_engine(
        url,
        isolation_level="READ COMMITTED" if immediate else "REPEATABLE READ",
        # No pool_pre_ping: a round trip per transaction. A connection the server dropped fails
        # once and is thrown away (SQLAlchemy's disconnect handling, Store.raw_write's).
        connect_args={"options": options, "connect_timeout": 10},
    )
    if immediate:
        statement = f"SELECT pg_advisory_xact_lock({lock_key(lock)})"

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql(statement)

    return engine


class WalCheckpointer:
    """Checkpoints an SQLite database's WAL in a thread of its own, so that no grant pays for it.

    Profiled: with SQLite's automatic checkpoint (every 1,000 WAL pages) about one commit in a
    hundred copied the WAL back into the database and synced it inside that commit, a few
    milliseconds: the whole of the allocation p99 above 1 ms. A PASSIVE checkpoint here, every
    ``every_s`` seconds or after ``every_commits`` commits, blocks no reader and no writer.
    """

    def __init__(self, database: str, *, every_s: float = 2.0, every_commits: int = 200) -> None:
        self._database = database
        self._every_s, self._every_commits = every_s, every_commits
        self._commits = 0
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="labgpu-wal-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """A commit that did not checkpoint: wake the thread after ``every_commits`` of them."""
        self._commits += 1
        if self._commits >= self._every_commits:
            self._commits = 0
            self._wake.set()

    def _run(self) -> None:
        import sqlite3

        connection = sqlite3.connect(self._database, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            while not self._stopped:
                self._wake.wait(self._every_s)
                self._wake.clear()
                with contextlib.suppress(sqlite3.Error):  # busy or gone: the next round tries again
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            connection.close()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=10)


def inserted_id(result: CursorResult[Any]) -> int:
    """The primary key of the row an ``INSERT`` just wrote."""
    key = result.inserted_primary_key
    if key is None:  # only for statements that are not single-row inserts
        raise ValueError("the statement inserted no row")
    return int(key[0])


def upsert(conn: Connection, table: Table, rows: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
    """Insert rows, or overwrite the other columns of those whose primary key exists already
    (``INSERT ... ON CONFLICT (key) DO UPDATE``: the same statement on SQLite and PostgreSQL)."""
    first = rows if isinstance(rows, dict) else rows[0]
    conn.execute(_upsert_statement(conn.dialect.name, table, tuple(first)), rows)


@functools.cache
def _upsert_statement(dialect: str, table: Table, columns: tuple[str, ...]) -> Any:
    # Built once per table and column set: building one costs more than running it.
    from sqlalchemy.dialects import postgresql, sqlite

    statement: Any = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    keys = [column.name for column in table.primary_key]
    changed = {name: statement.excluded[name] for name in columns if name not in keys}
    return statement.on_conflict_do_update(index_elements=keys, set_=changed)


# ============================================================================================
# Migrations: Alembic, to head, once
# ============================================================================================


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """Alembic's configuration for our migrations, on this connection (inside its transaction)
    or this URL; neither gives one for reading the migration scripts only."""
    from alembic.config import Config  # Alembic only when a database is opened

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        config.set_main_option("sqlalchemy.url", url)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def head_revision() -> str | None:
    """The newest revision in ``labgpu/db/migrations/versions`` (read once per process)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The revision this database is at; None for a database never migrated."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade_to_head(engine: Engine) -> bool:
    """Run Alembic migrations to ``head`` if the database is behind; True if it ran any.

    The check is one query; the upgrade runs inside one write transaction holding the migration
    lock (SQLite's write lock, a PostgreSQL advisory lock), so processes opening a fresh
    database at the same time migrate it exactly once. PostgreSQL's DDL is transactional: a
    migration that fails leaves the database as it was.
    """
    head = head_revision()
    with engine.connect() as conn:
        current = current_revision(conn)
        conn.rollback()
    if current == head:
        return False
    from alembic import command

    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # stores with other lock domains migrate too
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({lock_key(_MIGRATION_LOCK)})")
        if current_revision(conn) == head:  # another process migrated it meanwhile
            return False
        command.upgrade(alembic_config(conn), "head")
    return True


# ============================================================================================
# The store skeleton
# ============================================================================================


class Store:
    """What every store has: the database's URL, two engines on it, a clock, and ``close``.

    ``writer``'s transactions take the store's lock first (``lock``: SQLite's ``BEGIN
    IMMEDIATE``, PostgreSQL's advisory lock of that name); ``reader`` reads a snapshot without
    taking it. With ``migrate`` the database is brought to the newest schema first. Safe to use
    from several threads and processes at once; use it as a context manager, or call
    :meth:`close`, to release its connections.
    """

    lock = LEDGER_LOCK
    background_checkpoints = False  # SQLite: checkpoint in a thread, not in this store's commits

    def __init__(self, url_or_path: str | Path, *, clock: Clock | None = None, migrate: bool = True) -> None:
        self.url = database_url(url_or_path)
        self.postgresql = is_postgresql(self.url)
        database = make_url(self.url).database or ""
        in_background = self.background_checkpoints and not self.postgresql and database not in ("", ":memory:")
        self.writer = ledger_engine(self.url, immediate=True, lock=self.lock, autocheckpoint=not in_background)
        self._checkpointer = WalCheckpointer(database) if in_background else None
        self.reader = ledger_engine(self.url, immediate=False)
        self._clock: Clock = clock or utc_now
        if migrate:
            upgrade_to_head(self.writer)

    @contextmanager
    def raw_write(self) -> Iterator[DBAPICursor]:
        """One write transaction on the driver's own connection and cursor, for the few hot
        paths (a grant, a release) where SQLAlchemy's per-statement work costs more than the
        database's: the same lock as :attr:`writer` (taken first), committed at the end,
        rolled back on any error. Statements use the driver's placeholders (see
        :mod:`labgpu.db.grant_sql`). A connection the server dropped (a PostgreSQL restart) is
        thrown away, so the next transaction opens a new one."""
        connection = self.writer.raw_connection()
        cursor = None
        try:
            cursor = connection.cursor()
            cursor.execute(self._lock_sql)
            yield cursor
            connection.commit()
            if self._checkpointer is not None:
                self._checkpointer.committed()
        except BaseException as exc:
            dialect = self.writer.dialect
            if isinstance(exc, dialect.loaded_dbapi.Error) and dialect.is_disconnect(
                exc, connection.dbapi_connection, cursor
            ):
                connection.invalidate(exc)
            else:
                connection.rollback()
            raise
        finally:
            connection.close()  # back to the pool

    def sql(self, statement: str) -> str:
        """A hand-written statement (``?`` placeholders) in this database driver's form."""
        return statement.replace("?", "%s") if self.postgresql else statement

    @functools.cached_property
    def _lock_sql(self) -> str:
        return f"SELECT pg_advisory_xact_lock({lock_key(self.lock)})" if self.postgresql else "BEGIN IMMEDIATE"

    def now(self) -> datetime:
        """The store's time (its injected clock's), aware UTC."""
        return self._clock()

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self.writer.dispose()
        self.reader.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
