"""What the hub process records for the Prometheus metrics that no other table keeps: each spawn
it refuses (with JupyterHub's reason: ``quota``, ``capacity``, ...) and what each reconcile of
the ledger with Docker found (:mod:`labgpu.db.hub_events`). Recording never fails a spawn or
the hub's start: a database error is logged and the refusal or start goes on as it would.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from jupyterhub.spawner import SpawnException

from labgpu.db.hub_events import HubEventStore
from labgpu.db.ledger import ReconcileResult
from labgpu.gpus.reconcile import ReconcilePlan

log = logging.getLogger("labgpu")
T = TypeVar("T")

_stores: dict[str, HubEventStore] = {}


def event_store(url: str) -> HubEventStore:
    """The one event store of this process for this ledger (the hub migrated it at start)."""
    if url not in _stores:
        _stores[url] = HubEventStore(url, migrate=False)
    return _stores[url]


def record_refusal(url: str, user: str, server: str, reason: str, message: str) -> None:
    try:
        event_store(url).record_refusal(user, server, reason, message[:500])
    except Exception as e:  # the metrics lose one refusal; the user still gets the message
        log.warning("Could not record the refusal of %s's spawn (%s): %s", user, reason, e)


@contextlib.asynccontextmanager
async def refusals_recorded(spawner: Any) -> AsyncIterator[None]:
    """Record a :class:`SpawnException` raised inside (then re-raise it), through the spawner's
    executor (``spawner.blocking``) and its ``ledger_url``; nothing without a ledger."""
    try:
        yield
    except SpawnException as e:
        if spawner.ledger_url:
            message = getattr(e, "jupyterhub_message", None) or str(e)
            await spawner.blocking(
                record_refusal, spawner.ledger_url, spawner.user.name, spawner.name or "", e.reason or "", message
            )
        raise


async def with_refusals_recorded(spawner: Any, step: Callable[[], Awaitable[T]]) -> T:
    """``await step()``, a refusal recorded as :func:`refusals_recorded` does."""
    async with refusals_recorded(spawner):
        return await step()


def reconcile_findings(plan: ReconcilePlan, result: ReconcileResult | None, stopped: int) -> dict[str, int]:
    """What a reconcile found, per kind, as the metrics count it (``labgpu_ledger_drift_total``)."""
    return {
        "adopted": len(result.adopted) if result else 0,
        "released": len(result.released) if result else 0,
        "stopped": stopped,
        "conflict": len(plan.conflicts),
        "skipped": len(result.skipped) if result else 0,
    }


def record_reconcile(url: str, plan: ReconcilePlan, result: ReconcileResult | None, stopped: int) -> None:
    findings = reconcile_findings(plan, result, stopped)
    try:
        event_store(url).record_reconcile(findings, "; ".join(plan.conflicts)[:2000])
    except Exception as e:
        log.warning("Could not record what the reconcile with Docker found (%s): %s", findings, e)
