"""The SQL of the ledger's write path (a grant, a release, a reconcile step), as the driver runs it.

A grant is the hub's hottest transaction, and SQLAlchemy's per-statement work (compile-cache
lookup, events, result objects) cost more than SQLite's own: about half of an allocation on a
64-GPU box (benchmarks/allocator.py, profiled). So :class:`labgpu.db.ledger.Ledger` writes
through the driver's cursor (:meth:`labgpu.db.engine.Store.raw_write`) with these statements,
the same on SQLite and PostgreSQL: ``?`` placeholders (turned into psycopg's ``%s``), quoted
``"user"`` and ``"index"`` (reserved words in PostgreSQL), ``NULLS FIRST`` (SQLite's default,
not PostgreSQL's), ``RETURNING`` (SQLite 3.35+). Times are written as SQLAlchemy writes them
(:func:`db_time`), so both paths read the same rows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

# The gpus columns the allocator reads, in this order (an "inventory" row).
GPU_COLUMNS = (
    "uuid",
    "index",
    "model",
    "memory_total",
    "healthy",
    "health_reason",
    "mig_enabled",
    "mig_devices",
    "pci_bus_id",
    "numa_node",
    "switch_group",
    "nvlink_peers",
    "present",
    "mig_parent",
    "mig_index",
    "health_override",
)
PRESENT = GPU_COLUMNS.index("present")
# A "holders" row: the GPU, then its allocation's columns.
HOLDER, HOLDER_SERVER, HELD_SINCE, ALLOCATION_ID, HOLDER_GROUP = range(1, 6)

_GPU_ORDER = 'g."index", g.mig_index NULLS FIRST, g.uuid'
_GPU_SELECT = ", ".join(f'g."{column}"' for column in GPU_COLUMNS)

STATEMENTS = {
    # A grant reads the inventory (every GPU, in index order) only when its version moved: 64
    # rows of 16 columns cost more than the rest of a grant. Who holds what it reads every time.
    "inventory_version": "SELECT value FROM ledger_state WHERE key = 'inventory_version'",
    "bump_inventory_version": "UPDATE ledger_state SET value = value + 1 WHERE key = 'inventory_version'",
    "inventory": f"SELECT {_GPU_SELECT} FROM gpus g ORDER BY {_GPU_ORDER}",
    "holders": (
        'SELECT ag.gpu_uuid, a."user", a.server, a.since, a.id, a.group_name'
        " FROM allocation_gpus ag JOIN allocations a ON a.id = ag.allocation_id"
    ),
    "server_allocation": 'SELECT id, since, image, group_name FROM allocations WHERE "user" = ? AND server = ?',
    "allocation_gpus": (
        "SELECT ag.gpu_uuid FROM allocation_gpus ag JOIN gpus g ON g.uuid = ag.gpu_uuid"
        f" WHERE ag.allocation_id = ? ORDER BY {_GPU_ORDER}"
    ),
    "insert_allocation": (
        'INSERT INTO allocations ("user", server, since, image, container_id, group_name, hub_id)'
        " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id"
    ),
    "insert_allocated": "INSERT INTO allocation_gpus (gpu_uuid, allocation_id) VALUES (?, ?)",
    "delete_allocated": "DELETE FROM allocation_gpus WHERE allocation_id = ?",
    "delete_allocation": "DELETE FROM allocations WHERE id = ?",
    "insert_event": (
        'INSERT INTO allocation_events (at, action, "user", server, gpu_uuids, allocation_id, image, reason,'
        " group_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ),
    "known_gpus": "SELECT uuid FROM gpus WHERE uuid IN ({})",
    "held_gpus": "SELECT gpu_uuid FROM allocation_gpus WHERE gpu_uuid IN ({})",
}


def statements(postgresql: bool) -> dict[str, str]:
    """:data:`STATEMENTS` in the driver's placeholder style (sqlite3 ``?``, psycopg ``%s``)."""
    return {name: sql.replace("?", "%s") if postgresql else sql for name, sql in STATEMENTS.items()}


def placeholders(count: int, postgresql: bool) -> str:
    """``?, ?, ?`` (or ``%s, ...``) for an ``IN (...)`` of ``count`` values."""
    return ", ".join(["%s" if postgresql else "?"] * count)


def db_time(when: datetime, postgresql: bool) -> Any:
    """An aware datetime as the ledger stores it (naive UTC): a datetime for psycopg, SQLAlchemy's
    text form (``2026-11-24 09:14:00.000000``) for SQLite, so string comparisons still order."""
    naive = when.astimezone(UTC).replace(tzinfo=None)
    return naive if postgresql else naive.isoformat(" ", "microseconds")


def utc_time(value: Any) -> datetime:
    """A stored time (SQLite's text, psycopg's naive datetime) as an aware UTC datetime."""
    naive = datetime.fromisoformat(value) if isinstance(value, str) else value
    return naive.replace(tzinfo=UTC)
