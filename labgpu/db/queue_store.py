"""The GPU queue and reclaim notices: the only code that reads or writes the ``gpu_queue`` and
``reclaim_notices`` tables (:mod:`labgpu.db.tables`, Alembic revision 0003), and the allocation
history read from the ledger's audit.

Opened beside a :class:`labgpu.db.ledger.Ledger`, on its file and with its clock; every write is
one ``BEGIN IMMEDIATE`` transaction. A queue entry is ``waiting`` until it is ``granted``,
``cancelled`` or ``abandoned``; rows are kept afterwards, for ``labgpu usage`` (queue waits).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, insert, select, update
from sqlalchemy.engine import Connection, Row

from labgpu.db.engine import Clock, Store, inserted_id
from labgpu.db.held_log import HeldIntervalLog
from labgpu.db.ledger import Ledger
from labgpu.db.tables import (
    ABANDONED,
    CANCELLED,
    GRANTED,
    WAITING,
    AllocationEventRow,
    QueueEntryRow,
    ReclaimNoticeRow,
)
from labgpu.labels import server_label

__all__ = [
    "ABANDONED",
    "CANCELLED",
    "GRANTED",
    "WAITING",
    "HeldInterval",
    "QueueEntry",
    "QueueStore",
    "ReclaimNotice",
]

_queue = QueueEntryRow.__table__
_notices = ReclaimNoticeRow.__table__
_events = AllocationEventRow.__table__


# ============================================================================================
# Plain results
# ============================================================================================


@dataclass(frozen=True)
class QueueEntry:
    """One row of the GPU queue."""

    id: int
    user: str
    server: str
    gpus: int
    groups: tuple[str, ...]
    models: tuple[str, ...] | None
    placement: str
    image: str | None
    exclude: tuple[str, ...]
    max_runtime: float | None
    submitted_at: datetime
    heartbeat_at: datetime
    status: str
    ended_at: datetime | None
    reason: str
    gpu_uuids: tuple[str, ...]
    group: str = ""  # the group the spawn chose to be charged to ("" = the policy's default)

    @property
    def server_label(self) -> str:
        return server_label(self.user, self.server)


@dataclass(frozen=True)
class ReclaimNotice:
    """The reclaimer's record of one allocation (see :class:`ReclaimNoticeRow`)."""

    id: int
    user: str
    server: str
    allocation_since: datetime
    gpus: int
    last_busy_at: datetime | None
    warned_at: datetime | None
    reason: str
    reclaim_at: datetime | None
    message: str
    reclaimed_at: datetime | None
    idle_for: float
    error: str


@dataclass(frozen=True)
class HeldInterval:
    """GPUs one allocation held: from ``start`` to ``end`` (None: still held)."""

    user: str
    server: str
    gpus: int
    start: datetime
    end: datetime | None
    reason: str = ""  # why it was released
    group: str = ""  # the group it was charged to ("" = none recorded)


def _entry(row: Any) -> QueueEntry:
    models = json.loads(row.models) if row.models is not None else None
    return QueueEntry(
        row.id,
        row.user,
        row.server,
        row.gpus,
        tuple(json.loads(row.groups or "[]")),
        tuple(models) if models is not None else None,
        row.placement,
        row.image,
        tuple(json.loads(row.exclude or "[]")),
        row.max_runtime,
        row.submitted_at,
        row.heartbeat_at,
        row.status,
        row.ended_at,
        row.reason or "",
        tuple(u for u in (row.gpu_uuids or "").split(",") if u),
        row.group_name or "",
    )


def _notice(row: Any) -> ReclaimNotice:
    return ReclaimNotice(
        row.id,
        row.user,
        row.server,
        row.allocation_since,
        row.gpus,
        row.last_busy_at,
        row.warned_at,
        row.reason or "",
        row.reclaim_at,
        row.message or "",
        row.reclaimed_at,
        row.idle_for or 0.0,
        row.error or "",
    )


def _upsert(
    conn: Connection, table: Table, key: Mapping[str, Any], *, created: Mapping[str, Any], changed: Mapping[str, Any]
) -> Row[Any]:
    """The oldest row whose columns equal ``key``, with ``changed`` written to it; when there is
    none, a new row of ``key``, ``created`` and ``changed``. Returns the row as it now stands."""
    where = [table.c[column] == value for column, value in key.items()]
    row = conn.execute(select(table).where(*where).order_by(table.c.id)).first()
    if row is None:
        row_id = inserted_id(conn.execute(insert(table).values({**key, **created, **changed})))
    else:
        row_id = row.id
        if changed:
            conn.execute(update(table).where(table.c.id == row_id).values(dict(changed)))
    return conn.execute(select(table).where(table.c.id == row_id)).one()


# ============================================================================================
# The store
# ============================================================================================


class QueueStore(Store):
    """Queue entries and reclaim notices in the ledger's database (migrated by the Ledger).

    Safe to use from several threads and processes at once, like the ledger.
    """

    def __init__(self, ledger: Ledger, *, clock: Clock | None = None) -> None:
        super().__init__(ledger.url, clock=clock or ledger.now, migrate=False)
        self.ledger = ledger
        self.held_log: HeldIntervalLog | None = None  # set by a long-lived reader (the web service)

    # -- the queue ----------------------------------------------------------------------------

    def enqueue(
        self,
        user: str,
        server: str,
        gpus: int,
        *,
        groups: Sequence[str] = (),
        models: Sequence[str] | None = None,
        placement: str = "pack",
        image: str | None = None,
        exclude: Sequence[str] = (),
        max_runtime: float | None = None,
        group: str | None = None,
    ) -> QueueEntry:
        """Queue this server's request; a server already waiting keeps its place (its original
        submission time: a spawn retried after a hub restart is not sent to the back)."""
        now = self._clock()
        values = dict(
            gpus=gpus,
            groups=json.dumps(list(groups)),
            models=None if models is None else json.dumps(list(models)),
            placement=placement,
            image=image,
            exclude=json.dumps(list(exclude)),
            max_runtime=max_runtime,
            group_name=group or "",
            heartbeat_at=now,
        )
        key = dict(user=user, server=server, status=WAITING)
        created = dict(submitted_at=now, reason="", gpu_uuids="")
        with self.writer.begin() as conn:
            return _entry(_upsert(conn, _queue, key, created=created, changed=values))

    def entry(self, entry_id: int) -> QueueEntry | None:
        with self.reader.connect() as conn:
            row = conn.execute(select(_queue).where(_queue.c.id == entry_id)).first()
            return _entry(row) if row else None

    def waiting(self) -> list[QueueEntry]:
        """Every waiting entry, oldest first."""
        with self.reader.connect() as conn:
            rows = conn.execute(
                select(_queue).where(_queue.c.status == WAITING).order_by(_queue.c.submitted_at, _queue.c.id)
            )
            return [_entry(r) for r in rows]

    def waiting_for(self, user: str, server: str = "") -> QueueEntry | None:
        """This server's waiting entry, if any."""
        with self.reader.connect() as conn:
            row = conn.execute(
                select(_queue).where(_queue.c.user == user, _queue.c.server == server, _queue.c.status == WAITING)
            ).first()
            return _entry(row) if row else None

    def someone_waiting(self, fresh_within: float | None = None) -> bool:
        """Is any spawn waiting (seen by its hub within ``fresh_within`` seconds, if given)?"""
        query = select(_queue.c.id).where(_queue.c.status == WAITING)
        if fresh_within is not None:
            query = query.where(_queue.c.heartbeat_at >= self._clock() - timedelta(seconds=fresh_within))
        with self.reader.connect() as conn:
            return conn.execute(query.limit(1)).first() is not None

    def history(self, since: datetime | None = None, user: str | None = None) -> list[QueueEntry]:
        """Every entry submitted at or after ``since`` (all when None), of ``user`` (everyone's
        when None), oldest first."""
        query = select(_queue).order_by(_queue.c.submitted_at, _queue.c.id)
        if since is not None:
            query = query.where(_queue.c.submitted_at >= since)
        if user is not None:
            query = query.where(_queue.c.user == user)
        with self.reader.connect() as conn:
            return [_entry(r) for r in conn.execute(query)]

    def heartbeat(self, entry_ids: Sequence[int]) -> None:
        """Mark these entries as still waited for by a spawn."""
        if not entry_ids:
            return
        with self.writer.begin() as conn:
            conn.execute(
                update(_queue)
                .where(_queue.c.id.in_(list(entry_ids)), _queue.c.status == WAITING)
                .values(heartbeat_at=self._clock())
            )

    def grant(self, entry_id: int, gpu_uuids: Sequence[str]) -> bool:
        """Record that this entry got its GPUs; False if it was no longer waiting."""
        return self._end(entry_id, GRANTED, "granted", gpu_uuids)

    def cancel(self, entry_id: int, reason: str = "cancelled") -> bool:
        """Take this entry out of the queue; False if it was no longer waiting."""
        return self._end(entry_id, CANCELLED, reason)

    def cancel_server(self, user: str, server: str = "", reason: str = "cancelled") -> int:
        """Take this server's waiting entry (if any) out of the queue; how many were removed."""
        with self.writer.begin() as conn:
            result = conn.execute(
                update(_queue)
                .where(_queue.c.user == user, _queue.c.server == server, _queue.c.status == WAITING)
                .values(status=CANCELLED, ended_at=self._clock(), reason=reason)
            )
            return result.rowcount

    def abandon_stale(self, older_than: float) -> list[QueueEntry]:
        """End the waiting entries no spawn has waited on for ``older_than`` seconds (their
        owner did not come back after a hub restart); returns them."""
        cutoff = self._clock() - timedelta(seconds=older_than)
        with self.writer.begin() as conn:
            rows = conn.execute(select(_queue).where(_queue.c.status == WAITING, _queue.c.heartbeat_at < cutoff)).all()
            if rows:
                conn.execute(
                    update(_queue)
                    .where(_queue.c.id.in_([r.id for r in rows]))
                    .values(status=ABANDONED, ended_at=self._clock(), reason=f"nobody waited for {older_than:.0f} s")
                )
            return [_entry(r) for r in rows]

    def _end(self, entry_id: int, status: str, reason: str, gpu_uuids: Sequence[str] = ()) -> bool:
        with self.writer.begin() as conn:
            result = conn.execute(
                update(_queue)
                .where(_queue.c.id == entry_id, _queue.c.status == WAITING)
                .values(status=status, ended_at=self._clock(), reason=reason, gpu_uuids=",".join(gpu_uuids))
            )
            return result.rowcount > 0

    # -- allocation history (for decayed usage and accounting) ---------------------------------

    def held_intervals(self, since: datetime, until: datetime | None = None) -> list[HeldInterval]:
        """Allocations overlapping [since, until) from the ledger's audit: grants/adoptions
        paired with their releases; ones granted before ``since`` start at ``since``. The whole
        audit is read, unless ``held_log`` keeps one read incrementally (a long-lived reader)."""
        until = until or self._clock()
        log = self.held_log or HeldIntervalLog()
        with self.reader.connect() as conn:
            return log.intervals(conn, since, until)

    def notices(self, *, active_only: bool = False) -> list[ReclaimNotice]:
        query = select(_notices).order_by(_notices.c.id)
        if active_only:
            query = query.where(_notices.c.reclaimed_at.is_(None))
        with self.reader.connect() as conn:
            return [_notice(r) for r in conn.execute(query)]

    def notices_for(self, user: str, since: datetime | None = None) -> list[ReclaimNotice]:
        """This user's warnings and reclamations (warned or reclaimed at or after ``since``)."""
        query = (
            select(_notices).where(_notices.c.user == user, _notices.c.warned_at.is_not(None)).order_by(_notices.c.id)
        )
        with self.reader.connect() as conn:
            found = [_notice(r) for r in conn.execute(query)]
        if since is None:
            return found
        return [n for n in found if (n.reclaimed_at or n.warned_at) >= since]  # type: ignore[operator]

    def watch(
        self, user: str, server: str, allocation_since: datetime, gpus: int, *, busy_at: datetime | None = None
    ) -> ReclaimNotice:
        """The notice row of this allocation, created on first sight (its GPUs counted as busy
        then, so a reclaimer started late never reclaims before a full idle timeout); with
        ``busy_at``, record that its GPUs were busy then."""
        key = dict(user=user, server=server, allocation_since=allocation_since)
        busy = {} if busy_at is None else {"last_busy_at": busy_at}
        with self.writer.begin() as conn:
            first_seen = dict(gpus=gpus, last_busy_at=self._clock(), reason="", message="", idle_for=0.0, error="")
            return _notice(_upsert(conn, _notices, key, created=first_seen, changed=busy))

    def record_warning(self, notice_id: int, *, reason: str, reclaim_at: datetime, message: str) -> None:
        with self.writer.begin() as conn:
            conn.execute(
                update(_notices)
                .where(_notices.c.id == notice_id)
                .values(warned_at=self._clock(), reason=reason, reclaim_at=reclaim_at, message=message)
            )

    def record_reclaim(self, notice_id: int, *, reason: str, message: str, idle_for: float, error: str = "") -> None:
        """Record a reclamation (``error``: the hub refused to stop the server; retried next round)."""
        with self.writer.begin() as conn:
            values: dict[str, Any] = dict(reason=reason, error=error)
            if not error:
                values.update(reclaimed_at=self._clock(), message=message, idle_for=idle_for)
            conn.execute(update(_notices).where(_notices.c.id == notice_id).values(**values))
