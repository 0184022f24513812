"""A throwaway PostgreSQL cluster owned by the test run: Debian's PostgreSQL binaries, a cluster
in a temporary directory, listening on 127.0.0.1 on a free port and on a socket in that
directory, never the machine's own service. The test session starts one (tests/conftest.py's
``postgres_cluster``), each test gets a database of its own, and the cluster is stopped and
deleted at the end. benchmarks/ use it too.

PostgreSQL refuses to run as root: as root the cluster runs as the unprivileged system user
``labgpu-pg`` (created when missing). ``scripts/need-postgres.sh`` installs the packages.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

SYSTEM_USER = "labgpu-pg"
SUPERUSER = "labgpu"
INITDB_OPTIONS = ("--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync")


def postgres_bindir() -> Path | None:
    """The newest Debian PostgreSQL's binaries (``/usr/lib/postgresql/N/bin``), else ``pg_ctl``'s
    directory on PATH, else None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """A running throwaway cluster: :meth:`new_database` gives each caller an empty database
    (from a template migrated once, so stores open it without migrating), :meth:`stop` ends it."""

    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        self.bindir = bindir
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="labgpu-pg-"))
        self.data = self.root / "data"
        self._names = itertools.count(1)
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            _ensure_system_user()
            shutil.chown(self.root, SYSTEM_USER)
            self._run_as = ["runuser", "-u", SYSTEM_USER, "--"]
        self._initdb(durable)
        self._ctl("start", "-w", "-t", "60", "-l", str(self.root / "log"))
        self._template: str | None = None

    def _initdb(self, durable: bool) -> None:
        subprocess.run(
            [*self._run_as, str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, *INITDB_OPTIONS],
            check=True,
            capture_output=True,
        )
        settings = [
            f"port = {self.port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.root}'",
            "max_connections = 200",
            "shared_buffers = 64MB",
        ]
        # Commits are not waited to disk, like the SQLite ledger's synchronous=NORMAL in WAL mode:
        # a power cut may lose the last commits, never consistency. Tests (not ``durable``)
        # skip fsync altogether: what a crash of the machine would lose does not matter there.
        settings.append("synchronous_commit = off")
        if not durable:
            settings += ["fsync = off", "full_page_writes = off"]
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(settings) + "\n")

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self._run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args], check=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str) -> None:
        """Run one statement as the superuser, outside any transaction (CREATE DATABASE ...)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def new_database(self, *, migrated: bool = True) -> str:
        """The URL of a new, empty database: at Alembic's head (``migrated``) or bare."""
        name = f"labgpu_{os.getpid()}_{next(self._names)}"
        template = self._migrated_template() if migrated else "template0"
        self.execute(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")

    def _migrated_template(self) -> str:
        if self._template is None:
            from labgpu.db.engine import ledger_engine, upgrade_to_head

            self.execute("CREATE DATABASE labgpu_template TEMPLATE template0")
            engine = ledger_engine(self.url("labgpu_template"))
            upgrade_to_head(engine)
            engine.dispose()
            self._template = "labgpu_template"
        return self._template

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._ctl("stop", "-m", "immediate", "-w")
        shutil.rmtree(self.root, ignore_errors=True)


def _ensure_system_user() -> None:
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
            capture_output=True,
        )


@contextlib.contextmanager
def throwaway_cluster(*, durable: bool = False) -> Iterator[PostgresCluster]:
    """A cluster for the length of a ``with`` block (benchmarks); RuntimeError if PostgreSQL is
    not installed (``scripts/need-postgres.sh`` installs it)."""
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed: run scripts/need-postgres.sh (apt-get install postgresql)")
    cluster = PostgresCluster(bindir, durable=durable)
    try:
        yield cluster
    finally:
        cluster.stop()
