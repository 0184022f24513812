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

from sqlalchemy import insert, select

from labgpu.db.engine import Clock, Store
from labgpu.db.tables import HubEventRow

__all__ = ["RECONCILE", "REFUSAL", "HubEvent", "HubEventStore"]

REFUSAL, RECONCILE = "refusal", "reconcile"

_events = HubEventRow.__table__


@dataclass(frozen=True)
class HubEvent:
    """One row: a refusal or one kind of finding of one reconcile (``count`` of them)."""

    id: int
    at: datetime
    kind: str
    reason: str
    user: str
    server: str
    count: int
    message: str


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

    def after(self, after_id: int) -> list[HubEvent]:
        """Rows after ``after_id``, in the order they were written (append-only: a reader that
        keeps the last id it saw reads each row once)."""
        query = select(_events).where(_events.c.id > after_id).order_by(_events.c.id)
        with self.reader.connect() as conn:
            return [
                HubEvent(**r._mapping)  # (r.count would be the row tuple's count method)
                for r in conn.execute(query)
            ]
