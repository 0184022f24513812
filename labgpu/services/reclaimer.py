"""Idle-GPU reclamation: a small loop (in the spirit of jupyterhub-idle-culler) that looks at
the GPUs, not at HTTP activity, and runs as a JupyterHub managed service (`labgpu reclaim`).

Every round it reads the ledger's allocations and each one's busy fraction from the
telemetry (the poller's samples), asks :func:`labgpu.fairshare.scheduler.reclaim_decisions` what is
due under each holder's limits (resolved with the groups the hub puts the user in, read from
the Hub REST API, and the policy's member lists): ``max_runtime`` stops a GPU server busy or
not, ``idle_timeout`` one whose GPUs sit idle (only while someone waits, if the policy says so).
It records warnings in the ledger (``reclaim_notices``, which :mod:`labgpu.hub.announcement`
shows on every hub page) and logs them, and stops servers through the Hub REST API with the
service's token. The home volume outlives the container; the spawner's stop releases the GPUs
and wakes the queue.
A GPU that is busy, or that telemetry has no data for, is never reclaimed for idleness.
Servers without GPUs hold nothing in the ledger and are left alone (the spawn page promises
``max_runtime`` for GPU servers only).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.error import HTTPError, URLError
from urllib.parse import quote
from urllib.request import Request, urlopen

from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import QueueStore
from labgpu.fairshare import scheduler
from labgpu.fairshare.scheduler import Reclaim, ReclaimReason, RunningAllocation, Warn
from labgpu.quota import FairshareConfig, Policy, resolve

log = logging.getLogger("labgpu.reclaim")

BusyFraction = Callable[[Sequence[str], float, float], "float | None"]  # (GPU UUIDs, since, until) -> 0..1 or None
StopServer = Callable[[str, str], "str | None"]  # (user, server) -> None on success, else what went wrong
GroupsOf = Callable[[str], Sequence[str]]  # user -> the groups the hub puts them in

# What the service's Hub API token needs, and no more: stop servers (DELETE /users/{user}/server)
# and read a user's groups (GET /users/{user}, which read:users:groups answers with the groups).
HUB_API_SCOPES = ("servers", "read:users:groups")


def no_hub_groups(user: str) -> Sequence[str]:
    """Without the Hub API (a dry run without a token): only the policy's member lists count."""
    return ()


@dataclass(frozen=True)
class ReclaimSettings:
    """Knobs of the reclaimer (seconds); the policy's ``idle_timeout``, ``max_runtime`` and
    ``fairshare`` section say *when*, these say how it is measured and announced."""

    warn_before: float = 900.0  # a warning comes this long before the server is stopped
    idle_threshold: float = 0.05  # busy fraction below which GPUs count as idle
    busy_window: float = 300.0  # each round looks at the GPUs' busy fraction over this window
    waiting_fresh: float = 60.0  # a queue entry counts as someone waiting if its hub saw it this recently


def _ts(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def _reason(recorded: str) -> ReclaimReason | None:
    """Which rule the notice's warning was for (its ``reason``; '' before any warning)."""
    return "max_runtime" if recorded == "max_runtime" else "idle" if recorded == "idle" else None


def reclaim_round(
    ledger: Ledger,
    store: QueueStore,
    policy: Policy | None,
    busy_fraction: BusyFraction,
    stop_server: StopServer,
    settings: ReclaimSettings = ReclaimSettings(),
    *,
    dry_run: bool = False,
    groups_of: GroupsOf = no_hub_groups,
) -> list[Warn | Reclaim]:
    """One round: record busy GPUs, warn, and stop what is due; returns what it decided.
    ``groups_of`` gives each holder's hub groups (asked once per user and round)."""
    now = store.now()
    fairshare = policy.spec.fairshare if policy is not None else FairshareConfig()
    someone_waiting = store.someone_waiting(fresh_within=settings.waiting_fresh)
    hub_groups: dict[str, Sequence[str]] = {}
    done: list[Warn | Reclaim] = []
    for allocation in ledger.allocations():
        if not allocation.gpu_uuids:
            continue
        limits = None
        if policy is not None:
            if allocation.user not in hub_groups:
                hub_groups[allocation.user] = groups_of(allocation.user)
            limits = resolve(policy, allocation.user, hub_groups[allocation.user])
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
            warned_for=_reason(notice.reason),
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


def _hub_api(api_url: str, token: str, method: str, path: str, timeout: float) -> tuple[int, bytes]:
    """One Hub REST API call with the service's token: (HTTP status, body); raises HTTPError
    for an error status, URLError/OSError when the hub does not answer."""
    request = Request(api_url.rstrip("/") + path, method=method, headers={"Authorization": f"token {token}"})
    with urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


def hub_server_stopper(api_url: str, token: str, timeout: float = 30.0) -> StopServer:
    """Stop servers with DELETE /users/{user}/server or /users/{user}/servers/{name} (the
    token needs the ``servers`` scope, e.g. through a role for the service)."""

    def stop_server(user: str, server: str) -> str | None:
        path = f"/users/{quote(user, safe='')}/server"
        if server:
            path += f"s/{quote(server, safe='')}"
        try:
            status, _ = _hub_api(api_url, token, "DELETE", path, timeout)
        except HTTPError as e:
            return f"HTTP {e.code} from {path}: {e.read().decode(errors='replace')[:300]}"
        except (URLError, OSError) as e:
            return f"hub API at {api_url} unreachable: {e}"
        return None if status in (200, 202, 204) else f"HTTP {status}"

    return stop_server


def hub_user_groups(api_url: str, token: str, timeout: float = 30.0) -> GroupsOf:
    """The groups the hub puts a user in (GET /users/{name} -> "groups"; the token needs
    ``read:users:groups``). When the hub does not answer, the groups it last gave for that user, else
    none (the policy's member lists still count), with a warning in the log."""
    known: dict[str, tuple[str, ...]] = {}

    def groups_of(user: str) -> Sequence[str]:
        path = f"/users/{quote(user, safe='')}"
        try:
            _, body = _hub_api(api_url, token, "GET", path, timeout)
            groups = tuple(str(g) for g in json.loads(body).get("groups") or ())
        except (OSError, ValueError, AttributeError) as e:  # HTTPError and URLError are OSErrors
            fallback = known.get(user, ())
            log.warning(
                "Could not read %s's groups from the hub at %s (%s); using %s",
                user,
                api_url,
                e,
                f"the last known: {', '.join(fallback)}" if fallback else "the quota files' member lists only",
            )
            return fallback
        known[user] = groups
        return groups

    return groups_of


def telemetry_busy_fraction(ledger_url: str) -> BusyFraction:
    """Busy fractions from the poller's tables in the ledger's database; None (counted as busy,
    so never reclaimed) while the poller has recorded nothing for those GPUs."""
    from sqlalchemy import inspect

    from labgpu.db.engine import ledger_engine
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
    groups_of: GroupsOf = no_hub_groups,
) -> None:
    """Run a round every ``interval`` seconds (the policy is re-read each round)."""
    while True:
        try:
            reclaim_round(
                ledger, store, policy(), busy_fraction, stop_server, settings, dry_run=dry_run, groups_of=groups_of
            )
        except Exception:
            log.exception("Reclaim round failed; trying again in %.0f s", interval)
        if once:
            return
        time.sleep(interval)
