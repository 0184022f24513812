"""The database plumbing every store shares: engines on one SQLite file, Alembic migrations to
``head``, and :class:`Store`, the skeleton each store is built on (its engines, its clock, close).

SQLite in WAL mode; every write is one ``BEGIN IMMEDIATE`` transaction, so writers in several
processes (hub, CLI, poller, reclaimer) are serialized by SQLite itself and a read-then-write
never races. Migrations are Alembic's (``labgpu/db/migrations``), with their own version table
so the database can be JupyterHub's too; a store that opens a database migrates it first.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy import CursorResult, Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "MIGRATIONS_DIR",
    "VERSION_TABLE",
    "Clock",
    "Store",
    "alembic_config",
    "head_revision",
    "inserted_id",
    "ledger_engine",
    "sqlite_url",
    "upgrade_to_head",
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
# Engines: SQLite, WAL, busy timeout, BEGIN IMMEDIATE
# ============================================================================================


def sqlite_url(url_or_path: str | Path) -> str:
    """An SQLAlchemy URL: a URL as given, a file path as an absolute ``sqlite:///`` URL."""
    text = str(url_or_path)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def ledger_engine(url_or_path: str | Path, *, immediate: bool = True, busy_timeout_ms: int = 30_000) -> Engine:
    """An engine on the database: WAL, a busy timeout, foreign keys on, and (for writers)
    transactions that start with ``BEGIN IMMEDIATE`` so that read-then-write cannot race."""
    url = make_url(sqlite_url(url_or_path))
    if url.get_backend_name() != "sqlite":
        return create_engine(url)
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
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def inserted_id(result: CursorResult[Any]) -> int:
    """The primary key of the row an ``INSERT`` just wrote."""
    key = result.inserted_primary_key
    if key is None:  # only for statements that are not single-row inserts
        raise ValueError("the statement inserted no row")
    return int(key[0])


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

    The check is one query; the upgrade runs inside one ``BEGIN IMMEDIATE`` transaction, so
    processes opening a fresh database at the same time migrate it exactly once.
    """
    head = head_revision()
    with engine.connect() as conn:
        current = current_revision(conn)
        conn.rollback()
    if current == head:
        return False
    from alembic import command

    with engine.begin() as conn:
        if current_revision(conn) == head:  # another process migrated it meanwhile
            return False
        command.upgrade(alembic_config(conn), "head")
    return True


# ============================================================================================
# The store skeleton
# ============================================================================================


class Store:
    """What every store has: the database's URL, two engines on it, a clock, and ``close``.

    ``writer``'s transactions start with ``BEGIN IMMEDIATE`` (take the write lock first);
    ``reader`` reads a snapshot without taking it. With ``migrate`` the database is brought to
    the newest schema first. Safe to use from several threads and processes at once; use it as
    a context manager, or call :meth:`close`, to release its connections.
    """

    def __init__(self, url_or_path: str | Path, *, clock: Clock | None = None, migrate: bool = True) -> None:
        self.url = sqlite_url(url_or_path)
        self.writer = ledger_engine(self.url, immediate=True)
        self.reader = ledger_engine(self.url, immediate=False)
        self._clock: Clock = clock or utc_now
        if migrate:
            upgrade_to_head(self.writer)

    def now(self) -> datetime:
        """The store's time (its injected clock's), aware UTC."""
        return self._clock()

    def close(self) -> None:
        self.writer.dispose()
        self.reader.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
