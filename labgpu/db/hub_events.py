"""Hub events worth counting that no other table records: the only code that reads or writes the
``hub_events`` table (:mod:`labgpu.db.tables`, Alembic revision 0010).

Two kinds, both append-only: ``refusal`` (a spawn the hub refused, with JupyterHub's reason:
``quota``, ``capacity``, ...) and ``reconcile`` (what one reconcile of the ledger with Docker
found: allocations ``adopted`` or ``released``, containers ``stopped``, ``conflict``\\s, steps
``skipped``). The Prometheus exporter (:mod:`labgpu.metrics`) counts them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, insert, select

from labgpu.db.engine import Clock, Store
from labgpu.db.tables import HubEventRow

__all__ = ["RECONCILE", "REFUSAL", "EventCounts", "HubEventStore"]

REFUSAL, RECONCILE = "refusal", "reconcile"

_events = HubEventRow.__table__


@dataclass(frozen=True)
class EventCounts:
    """Totals so far: refusals per reason, reconcile findings per kind; when the last reconcile
    ran (None: never recorded) and what it found."""

    refusals: Mapping[str, int]
    drift: Mapping[str, int]
    last_reconcile: datetime | None
    last_drift: Mapping[str, int]


class HubEventStore(Store):
    """Writes refusals and reconcile findings; counts them. Safe across threads and processes."""

    def __init__(self, url_or_path: str | Path, *, clock: Clock | None = None, migrate: bool = True) -> None:
        super().__init__(url_or_path, clock=clock, migrate=migrate)

    def record_refusal(self, user: str, server: str, reason: str, message: str = "") -> None:
        """A spawn refused with JupyterHub's ``reason`` (``quota``, ``capacity``, ...)."""
        row = {"user": user, "server": server, "reason": (reason or "other")[:32], "count": 1, "message": message}
        with self.writer.begin() as conn:
            conn.execute(insert(_events), [{"at": self._clock(), "kind": REFUSAL, **row}])

    def record_reconcile(self, findings: Mapping[str, int], details: str = "") -> None:
        """One reconcile's findings, e.g. ``{"adopted": 1, "released": 0, "conflict": 2}``: a row
        per kind (zeros too, so the time of the last reconcile is known even when all agreed)."""
        now = self._clock()
        rows = [
            {"at": now, "kind": RECONCILE, "reason": kind, "user": "", "server": "", "count": n, "message": details}
            for kind, n in sorted(findings.items())
        ]
        if rows:
            with self.writer.begin() as conn:
                conn.execute(insert(_events), rows)

    def counts(self) -> EventCounts:
        """Totals per kind and reason, and the time of the last reconcile."""
        query = select(_events.c.kind, _events.c.reason, func.sum(_events.c.count), func.max(_events.c.at)).group_by(
            _events.c.kind, _events.c.reason
        )
        refusals: dict[str, int] = {}
        drift: dict[str, int] = {}
        last: datetime | None = None
        with self.reader.connect() as conn:
            for kind, reason, total, at in conn.execute(query):
                if kind == REFUSAL:
                    refusals[reason] = int(total or 0)
                elif kind == RECONCILE:
                    drift[reason] = int(total or 0)
                    last = at if last is None or (at is not None and at > last) else last
            last_drift: dict[str, int] = {}
            if last is not None:
                rows = conn.execute(
                    select(_events.c.reason, _events.c.count).where(_events.c.kind == RECONCILE, _events.c.at == last)
                )
                last_drift = {reason: int(count) for reason, count in rows}
        return EventCounts(refusals, drift, last, last_drift)
