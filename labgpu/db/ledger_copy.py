"""Moving a lab's ledger database to another (SQLite to PostgreSQL): every table, checked by counts
and totals. What `labgpu migrate-ledger` runs.

Both databases are brought to Alembic's head first (the source as any store opening it would),
so they have the same tables; the target must hold no rows yet. The copy reads the source
inside its write lock (nothing changes it meanwhile: stop the hub first anyway) and writes the
target in one transaction holding the target's ledger and telemetry locks, so a failed copy
leaves the target empty. Rows keep their ids; PostgreSQL's id sequences are moved past them.
Then both are compared: the rows of every table, the sums of every numeric column, and the
GPU-hours the audit says were held, per user.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Float, Integer, Table, func, insert, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from labgpu.db.engine import TELEMETRY_LOCK, database_url, is_postgresql, ledger_engine, lock_key, upgrade_to_head
from labgpu.db.tables import Base

__all__ = ["CopyReport", "LedgerCopyError", "TableCheck", "copy_ledger"]

BATCH = 2000
SEEDED = {"ledger_state"}  # rows the migrations write themselves: the source's replace them


class LedgerCopyError(RuntimeError):
    """The copy cannot be made or does not check out; the message says why and what to do."""


@dataclass(frozen=True)
class TableCheck:
    """One table in both databases: its rows, and the sum of each numeric column."""

    table: str
    source_rows: int
    target_rows: int
    source_sums: dict[str, float]
    target_sums: dict[str, float]

    @property
    def ok(self) -> bool:
        return self.source_rows == self.target_rows and all(
            math.isclose(value, self.target_sums.get(column, math.nan), rel_tol=1e-9, abs_tol=1e-6)
            for column, value in self.source_sums.items()
        )


@dataclass
class CopyReport:
    tables: list[TableCheck] = field(default_factory=list)
    source_gpu_hours: dict[str, float] = field(default_factory=dict)  # held, per user, from the audit
    target_gpu_hours: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        hours_match = self.source_gpu_hours.keys() == self.target_gpu_hours.keys() and all(
            math.isclose(hours, self.target_gpu_hours[user], rel_tol=1e-9, abs_tol=1e-9)
            for user, hours in self.source_gpu_hours.items()
        )
        return hours_match and all(check.ok for check in self.tables)

    @property
    def rows(self) -> int:
        return sum(check.target_rows for check in self.tables)


def _tables() -> list[Table]:
    return [table for table in Base.metadata.sorted_tables]  # parents before children


def _numeric_columns(table: Table) -> list[str]:
    return [c.name for c in table.columns if isinstance(c.type, Integer | Float)]


def _check(source: Connection, target: Connection, table: Table) -> TableCheck:
    def measure(conn: Connection) -> tuple[int, dict[str, float]]:
        columns = _numeric_columns(table)
        row = conn.execute(
            select(func.count(), *(func.coalesce(func.sum(table.c[name]), 0) for name in columns)).select_from(table)
        ).one()
        return int(row[0]), {name: float(value) for name, value in zip(columns, row[1:], strict=True)}

    (source_rows, source_sums), (target_rows, target_sums) = measure(source), measure(target)
    return TableCheck(table.name, source_rows, target_rows, source_sums, target_sums)


def _gpu_hours_held(conn: Connection, now: datetime) -> dict[str, float]:
    """GPU-hours per user from the audit: every grant or adoption until its release (or now)."""
    events = Base.metadata.tables["allocation_events"]
    opened: dict[int, tuple[str, datetime, int]] = {}
    hours: dict[str, float] = {}
    for at, action, user, uuids, allocation_id in conn.execute(
        select(events.c.at, events.c.action, events.c.user, events.c.gpu_uuids, events.c.allocation_id).order_by(
            events.c.id
        )
    ):
        gpus = len([u for u in (uuids or "").split(",") if u])
        if action in ("grant", "adopt"):
            opened[allocation_id] = (user, at, gpus)
        elif action == "release" and allocation_id in opened:
            holder, start, count = opened.pop(allocation_id)
            hours[holder] = hours.get(holder, 0.0) + count * (at - start).total_seconds() / 3600
    for holder, start, count in opened.values():
        hours[holder] = hours.get(holder, 0.0) + count * (now - start).total_seconds() / 3600
    return hours


def _batches(conn: Connection, table: Table) -> Iterator[list[dict[str, Any]]]:
    result = conn.execute(select(table))
    while rows := result.fetchmany(BATCH):
        yield [dict(row._mapping) for row in rows]


def _move_sequences(conn: Connection) -> None:
    """PostgreSQL: each id sequence past the ids copied, so new rows do not collide with them."""
    for table in _tables():
        for column in table.primary_key.columns:
            if column.autoincrement is True or (
                column.autoincrement == "auto" and isinstance(column.type, Integer) and len(table.primary_key) == 1
            ):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'),"
                        f' COALESCE((SELECT MAX("{column.name}") FROM "{table.name}"), 0) + 1, false)'
                    )
                )


def copy_ledger(source_url: str, target_url: str, *, progress: Callable[[str, int], None] | None = None) -> CopyReport:
    """Copy every table of the ledger at ``source_url`` into the empty one at ``target_url``, then
    compare them; raises :class:`LedgerCopyError` when the target is not empty or they differ."""
    source_url, target_url = database_url(source_url), database_url(target_url)
    if source_url == target_url:
        raise LedgerCopyError("the source and the target are the same database")
    source, target = ledger_engine(source_url), ledger_engine(target_url)
    try:
        upgrade_to_head(source)
        upgrade_to_head(target)
        report = CopyReport()
        now = datetime.now(UTC)
        with source.begin() as src, target.begin() as dst:  # both writers: nothing moves meanwhile
            if is_postgresql(target_url):
                dst.exec_driver_sql(f"SELECT pg_advisory_xact_lock({lock_key(TELEMETRY_LOCK)})")
            filled = [
                t.name
                for t in _tables()
                if t.name not in SEEDED and dst.execute(select(func.count()).select_from(t)).scalar()
            ]
            if filled:
                raise LedgerCopyError(
                    f"the target already holds rows in {', '.join(filled)}: migrate into a new, empty database"
                )
            for table in _tables():
                if table.name in SEEDED:
                    dst.execute(table.delete())
                copied = 0
                for rows in _batches(src, table):
                    try:
                        dst.execute(insert(table), rows)
                    except DBAPIError as exc:  # e.g. a value longer than PostgreSQL's VARCHAR allows
                        raise LedgerCopyError(
                            f"cannot copy table {table.name} (rows {copied + 1}-{copied + len(rows)}): "
                            f"{str(exc.orig).strip()}; nothing was written"
                        ) from None
                    copied += len(rows)
                if progress:
                    progress(table.name, copied)
            if is_postgresql(target_url):
                _move_sequences(dst)
            report.tables = [_check(src, dst, table) for table in _tables()]
            report.source_gpu_hours = _gpu_hours_held(src, now)
            report.target_gpu_hours = _gpu_hours_held(dst, now)
            if not report.ok:
                wrong = [c.table for c in report.tables if not c.ok] or ["GPU-hours held"]
                raise LedgerCopyError(f"the copy does not match the source ({', '.join(wrong)}); nothing was written")
        return report
    finally:
        source.dispose()
        target.dispose()
