"""Which allocation held how many GPUs from when to when, paired from the ledger's append-only
allocation audit (grant/adopt ... release), for usage figures and fair-share usage.

:meth:`QueueStore.held_intervals <labgpu.db.queue_store.QueueStore.held_intervals>` reads the
whole audit each time through a fresh :class:`HeldIntervalLog`; a long-lived process (the web
service) keeps one log and reads only the events added since its last look, so a page over 30
days of a busy lab costs the new events, not the lab's history.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from labgpu.db.tables import AllocationEventRow

_events = AllocationEventRow.__table__
# Event ids a transaction may still commit below the highest one seen (PostgreSQL hands out ids
# before commit): re-read this many below it, and skip those already paired.
ID_MARGIN = 200


@dataclass
class _Held:
    user: str
    server: str
    gpus: int
    start: datetime | None  # None: granted before the events this log read
    end: datetime | None = None
    reason: str = ""
    group: str = ""


class HeldIntervalLog:
    """The audit's grant/adopt and release events paired per allocation, read incrementally."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_id = 0
        self._seen: set[int] = set()  # ids within ID_MARGIN of the highest
        self._open: dict[int, _Held] = {}
        self._closed: list[_Held] = []

    def refresh(self, conn: Connection) -> None:
        """Read the events added since the last refresh."""
        rows = conn.execute(
            select(
                _events.c.id,
                _events.c.at,
                _events.c.action,
                _events.c.user,
                _events.c.server,
                _events.c.gpu_uuids,
                _events.c.allocation_id,
                _events.c.reason,
                _events.c.group_name,
            )
            .where(_events.c.id > self._last_id - ID_MARGIN)
            .order_by(_events.c.id)
        ).all()
        for row in rows:
            self._feed(row)

    def _feed(self, row: Any) -> None:
        event_id, at, action, user, server, uuids, allocation_id, reason, group = row
        if event_id in self._seen or event_id <= self._last_id - ID_MARGIN:
            return
        self._seen.add(event_id)
        if event_id > self._last_id:
            self._last_id = event_id
            self._seen = {i for i in self._seen if i > event_id - ID_MARGIN}
        gpus = len([u for u in (uuids or "").split(",") if u])
        if action in ("grant", "adopt"):
            self._open[allocation_id] = _Held(user, server, gpus, at, group=group or "")
        elif action == "release":
            held = self._open.pop(allocation_id, None)
            start = held.start if held is not None else None
            charged = held.group if held is not None else group or ""
            if gpus:
                self._closed.append(_Held(user, server, gpus, start, at, reason or "", charged))

    def intervals(self, conn: Connection, since: datetime, until: datetime) -> list[Any]:
        """Allocations overlapping [since, until): ones granted before ``since`` start at
        ``since``, ones released at or after ``until`` are still held; oldest first."""
        from labgpu.db.queue_store import HeldInterval

        with self._lock:
            self.refresh(conn)
            found = []
            for h in self._closed:
                if h.end is None or h.end <= since or (h.start is not None and h.start >= until):
                    continue
                start = max(h.start or since, since)
                if h.end >= until:  # released after the period: held through it
                    found.append(HeldInterval(h.user, h.server, h.gpus, start, None, group=h.group))
                else:
                    found.append(HeldInterval(h.user, h.server, h.gpus, start, h.end, h.reason, h.group))
            found += [
                HeldInterval(h.user, h.server, h.gpus, max(h.start, since), None, group=h.group)
                for h in self._open.values()
                if h.gpus and h.start is not None and h.start < until
            ]
        return sorted(found, key=lambda h: (h.start, h.user, h.server))
