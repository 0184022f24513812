"""Idle-GPU reclamation: a small loop (in the spirit of jupyterhub-idle-culler) that looks at
the GPUs, not at HTTP activity, and runs as a JupyterHub managed service (`labgpu reclaim`).

Every round it reads the ledger's allocations and each one's busy fraction from the
telemetry (the poller's samples), asks :func:`labgpu.fairshare.scheduler.reclaim_decisions` what is
due, records warnings in the ledger (``reclaim_notices``: the hub shows them on every hub page
through ``c.JupyterHub.template_vars["announcement"] = hub_announcement(...)``, and logs them),
and stops reclaimed servers through the Hub REST API with the service's token. The home
volume outlives the container; the spawner's stop releases the GPUs and wakes the queue.
A GPU that is busy, or that telemetry has no data for, is never reclaimed.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote
from urllib.request import Request, urlopen

from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import QueueStore, ReclaimNotice
from labgpu.fairshare import scheduler
from labgpu.fairshare.scheduler import Reclaim, RunningAllocation, Warn
from labgpu.quota.policy import FairshareConfig, Policy, resolve

log = logging.getLogger("labgpu.reclaim")

BusyFraction = Callable[[Sequence[str], float, float], "float | None"]  # (GPU UUIDs, since, until) -> 0..1 or None
StopServer = Callable[[str, str], "str | None"]  # (user, server) -> None on success, else what went wrong


@dataclass(frozen=True)
class ReclaimSettings:
    """Knobs of the reclaimer (seconds); the policy's ``idle_timeout``, ``max_runtime`` and
    ``fairshare`` section say *when*, these say how it is measured and announced."""

    warn_before: float = 900.0  # a warning comes this long before the server is stopped
    idle_threshold: float = 0.05  # busy fraction below which GPUs count as idle
    busy_window: float = 300.0  # each round looks at the GPUs' busy fraction over this window
    waiting_fresh: float = 60.0  # a queue entry counts as someone waiting if its hub saw it this recently
    runtime_idle_grace: float = 300.0  # past max_runtime, stop once idle this long


def _ts(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def reclaim_round(
    ledger: Ledger,
    store: QueueStore,
    policy: Policy | None,
    busy_fraction: BusyFraction,
    stop_server: StopServer,
    settings: ReclaimSettings = ReclaimSettings(),
    *,
    dry_run: bool = False,
) -> list[Warn | Reclaim]:
    """One round: record busy GPUs, warn, and stop what is due; returns what it decided."""
    now = store.now()
    fairshare = policy.spec.fairshare if policy is not None else FairshareConfig()
    someone_waiting = store.someone_waiting(fresh_within=settings.waiting_fresh)
    done: list[Warn | Reclaim] = []
    for allocation in ledger.allocations():
        if not allocation.gpu_uuids:
            continue
        limits = resolve(policy, allocation.user) if policy is not None else None
        idle_timeout = float(limits.idle_timeout) if limits and limits.idle_timeout else fairshare.reclaim_idle_after
        max_runtime = float(limits.max_runtime) if limits and limits.max_runtime else None
        busy = busy_fraction(allocation.gpu_uuids, now.timestamp() - settings.busy_window, now.timestamp())
        busy_now = busy is None or busy >= settings.idle_threshold  # no data: counted as busy
        notice = store.watch(
            allocation.user,
            allocation.server,
            allocation.since,
            len(allocation.gpu_uuids),
            busy_at=now if busy_now else None,
        )
        if notice.reclaimed_at is not None:
            continue  # stopped already; the hub is releasing its GPUs
        running = RunningAllocation(
            allocation.server_label,
            allocation.user,
            len(allocation.gpu_uuids),
            allocation.since.timestamp(),
            max_runtime=max_runtime,
            last_busy_at=_ts(notice.last_busy_at),
            warned_at=_ts(notice.warned_at),
        )
        actions = scheduler.reclaim_decisions(
            [running],
            {} if busy is None else {running.id: busy},
            now.timestamp(),
            idle_timeout=idle_timeout,
            max_runtime=max_runtime,
            someone_waiting=someone_waiting,
            only_when_waiting=fairshare.reclaim_only_when_waiting,
            warn_before=settings.warn_before,
            idle_threshold=settings.idle_threshold,
            runtime_idle_grace=settings.runtime_idle_grace,
        )
        for action in actions:
            if isinstance(action, Warn):
                log.warning("Warning %s: %s", allocation.server_label, action.message)
                if not dry_run:
                    reclaim_at = datetime.fromtimestamp(action.reclaim_at, UTC)
                    store.record_warning(notice.id, reason=action.reason, reclaim_at=reclaim_at, message=action.message)
            else:
                log.warning("Reclaiming %s: %s", allocation.server_label, action.message)
                if not dry_run:
                    error = stop_server(allocation.user, allocation.server)
                    if error:
                        log.error(
                            "Could not stop %s through the hub: %s (retrying next round)",
                            allocation.server_label,
                            error,
                        )
                    store.record_reclaim(
                        notice.id,
                        reason=action.reason,
                        message=action.message,
                        idle_for=action.idle_for,
                        error=error or "",
                    )
            done.append(action)
    return done


# ---------------------------------------------------------------------------------------
# The Hub REST API and telemetry, at the edge
# ---------------------------------------------------------------------------------------


def hub_server_stopper(api_url: str, token: str, timeout: float = 30.0) -> StopServer:
    """Stop servers with DELETE /users/{user}/server or /users/{user}/servers/{name} (the
    token needs the ``servers`` scope, e.g. through a role for the service)."""

    def stop_server(user: str, server: str) -> str | None:
        path = f"/users/{quote(user, safe='')}/server"
        if server:
            path += f"s/{quote(server, safe='')}"
        request = Request(api_url.rstrip("/") + path, method="DELETE", headers={"Authorization": f"token {token}"})
        try:
            with urlopen(request, timeout=timeout) as response:
                return None if response.status in (200, 202, 204) else f"HTTP {response.status}"
        except HTTPError as e:
            return f"HTTP {e.code} from {path}: {e.read().decode(errors='replace')[:300]}"
        except (URLError, OSError) as e:
            return f"hub API at {api_url} unreachable: {e}"

    return stop_server


def telemetry_busy_fraction(ledger_url: str) -> BusyFraction:
    """Busy fractions from the poller's tables in the ledger's database; None (counted as busy,
    so never reclaimed) while the poller has recorded nothing for those GPUs."""
    from sqlalchemy import inspect

    from labgpu.db.ledger import ledger_engine
    from labgpu.db.telemetry_store import TelemetryDB

    engine = ledger_engine(ledger_url, immediate=False)
    has_tables = "telemetry_gpu_sample" in inspect(engine).get_table_names()
    engine.dispose()
    if not has_tables:
        log.warning(
            "No telemetry in %s (is the poller running?): no GPU counts as idle, nothing is reclaimed", ledger_url
        )
        return lambda gpu_uuids, since, until: None
    telemetry = TelemetryDB(ledger_url, migrate=False)  # the Ledger migrated the database
    return lambda gpu_uuids, since, until: telemetry.busy_fraction(gpu_uuids, since, until)


# ---------------------------------------------------------------------------------------
# What users see on the hub's pages
# ---------------------------------------------------------------------------------------


def _at(moment: datetime) -> str:
    return moment.astimezone().strftime("%H:%M")


def announcement_for(store: QueueStore, user: str, *, recent: float = 86400.0) -> str:
    """HTML for the hub's announcement bar: this user's pending warnings and the servers
    reclaimed in the last ``recent`` seconds ('' when there is nothing to say)."""
    now = store.now()
    held = {(a.user, a.server, a.since) for a in store.ledger.allocations()}
    lines = []
    for notice in store.notices_for(user, since=now - timedelta(seconds=recent)):
        name = f"Your server {notice.server!r}" if notice.server else "Your server"
        if notice.reclaimed_at is not None:
            lines.append(
                f"{name} was stopped at {_at(notice.reclaimed_at)}: {notice.message} "
                "Your files in your home are kept; start it again when you need the GPUs."
            )
        elif (notice.user, notice.server, notice.allocation_since) in held and _warning_standing(notice):
            lines.append(
                f"{name} will be stopped at {_at(notice.reclaim_at)} unless its GPUs get busy: "  # type: ignore[arg-type]
                f"{notice.message}"
            )
    return "<br>".join(html.escape(line) for line in lines)


def _warning_standing(notice: ReclaimNotice) -> bool:
    """A warning stands until the GPUs get busy again after it."""
    return (
        notice.warned_at is not None
        and notice.reclaim_at is not None
        and (notice.last_busy_at is None or notice.last_busy_at <= notice.warned_at)
    )


def hub_announcement(ledger_url: str, fallback: str = "") -> Callable[[Any], str]:
    """A ``c.JupyterHub.template_vars["announcement"]`` value: the current user's reclaim
    notices (JupyterHub calls it with the user, or None on the login page)."""
    stores: dict[str, QueueStore] = {}

    def announcement(user: Any) -> str:
        if user is None:
            return fallback
        if "store" not in stores:
            stores["store"] = QueueStore(Ledger(ledger_url))
        try:
            text = announcement_for(stores["store"], user.name)
        except Exception as e:  # never break a hub page over a notice
            log.warning("Could not read reclaim notices for %s: %s", user.name, e)
            text = ""
        return "<br>".join(t for t in (fallback, text) if t)

    return announcement


def run_forever(
    ledger: Ledger,
    store: QueueStore,
    policy: Callable[[], Policy | None],
    busy_fraction: BusyFraction,
    stop_server: StopServer,
    settings: ReclaimSettings,
    interval: float,
    *,
    dry_run: bool = False,
    once: bool = False,
) -> None:
    """Run a round every ``interval`` seconds (the policy is re-read each round)."""
    while True:
        try:
            reclaim_round(ledger, store, policy(), busy_fraction, stop_server, settings, dry_run=dry_run)
        except Exception:
            log.exception("Reclaim round failed; trying again in %.0f s", interval)
        if once:
            return
        time.sleep(interval)
