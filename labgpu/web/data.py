"""What the pages show, as plain JSON-ready dicts (the JSON API returns them as they are; the
templates render them): the GPU board, one user's usage, the lab's usage.

The figures come from the owners of each rule: the ledger (who holds what), the GPU queue's
own ordering and :func:`labgpu.fairshare.scheduler.estimate_wait` (positions, estimates),
:mod:`labgpu.db.usage` (GPU-hours held and busy, waits, reclaims: the code behind
``labgpu usage``, so the pages' totals equal its for the same period) and
:mod:`labgpu.db.telemetry_views` (latest samples, sparklines, busy hours per day).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from labgpu.db.held_log import HeldIntervalLog
from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import QueueStore
from labgpu.db.session_store import SessionStore
from labgpu.db.telemetry_store import TelemetryDB
from labgpu.db.telemetry_views import TelemetryViews
from labgpu.db.usage import no_groups
from labgpu.fairshare import scheduler
from labgpu.gpus.allocator import HeldUnits, allocatable_unit
from labgpu.gpus.inventory import Gpu
from labgpu.hub.gpu_queue import GpuQueue
from labgpu.quota import Limits, Policy, resolve, user_groups
from labgpu.units import format_duration, format_size, gpus_text

HOUR = 3600.0
SOMEONE = "another user"


# --- who sees whose name -------------------------------------------------------------------
def name_rule(policy: Policy | None) -> str:
    return policy.spec.pages.show_names if policy is not None else "everyone"


def visible_name(viewer: Any, user: str, rule: str, groups_of: Callable[[str], Sequence[str]]) -> str | None:
    """``user`` as ``viewer`` may see it under the quota file's ``pages.show_names``, or None."""
    if user == viewer.name or viewer.admin or rule == "everyone":
        return user
    if rule == "group" and set(viewer.groups) & set(groups_of(user)):
        return user
    return None


def nvlink_islands(gpus: Iterable[Gpu]) -> list[list[str]]:
    """Groups of GPUs joined by NVLink, by label (``[["0", "1"], ["2", "3"]]``)."""
    listed = [g for g in gpus if not g.mig_parent]
    label_of = {g.uuid: g.label for g in listed}
    seen: set[str] = set()
    islands = []
    for gpu in sorted(listed, key=lambda g: g.index):
        if gpu.uuid in seen or not gpu.nvlink_peers:
            continue
        members = {gpu.uuid} | {p for p in gpu.nvlink_peers if p in label_of}
        seen |= members
        islands.append(sorted((label_of[m] for m in members), key=lambda s: (len(s), s)))
    return islands


def health_text(gpu: Gpu, present: bool, problem: str | None) -> str:
    if not present:
        return "gone"
    if problem or not gpu.healthy:
        return f"unhealthy: {problem or gpu.health_reason or 'see labgpu gpus'}"
    if gpu.mig_enabled:
        return f"ok, MIG mode ({len(gpu.mig_devices)} slices)"
    return "ok, MIG slice" if gpu.mig_parent else "ok"


# --- the stores, once per process ------------------------------------------------------------
@dataclass
class Stores:
    """The service's connections to the ledger (engines are made once: each costs milliseconds)."""

    url: str
    policy: Callable[[], Policy | None] = lambda: None
    ledger: Ledger = field(init=False)
    queue: QueueStore = field(init=False)
    sessions: SessionStore = field(init=False)
    views: TelemetryViews = field(init=False)
    telemetry: TelemetryDB = field(init=False)
    gpu_queue: GpuQueue = field(init=False)
    fairshare_usage: Cached = field(init=False)  # decayed usage per user, for the lab page

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.url, migrate=False)
        self.queue = QueueStore(self.ledger)
        self.sessions = SessionStore(self.ledger)
        self.views = TelemetryViews(self.url)
        self.telemetry = TelemetryDB(self.url, migrate=False)
        self.gpu_queue = GpuQueue(self.ledger, self.policy)
        # The allocation audit read once, then only its new events (usage, fair-share usage).
        self.queue.held_log = self.gpu_queue.store.held_log = HeldIntervalLog()
        self.fairshare_usage = Cached(60.0)


class Cached:
    """One value recomputed at most every ``ttl`` seconds (the board is polled by every open tab)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._value: Any = None
        self._at = -1e18

    def get(self, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                self._value = compute()
                self._at = time.monotonic()
            return self._value


# --- the GPU board ---------------------------------------------------------------------------
def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def board_snapshot(stores: Stores) -> dict[str, Any]:
    """Everything on the board, with every name (masked per viewer by :func:`board_for`)."""
    now = stores.queue.now()
    holdings = stores.ledger.holdings(include_gone=True)
    latest = stores.views.latest()
    series = stores.views.minute_series(now.timestamp() - HOUR, now.timestamp())
    problems = stores.telemetry.unhealthy_gpus() if latest else {}
    holds = HeldUnits.of(h.gpu for h in holdings if h.allocation)
    gpus = []
    free = total = 0
    for h in holdings:
        gpu, allocation = h.gpu, h.allocation
        sample = latest.get(gpu.uuid)
        points = series.get(gpu.uuid, [])
        start = now.timestamp() - HOUR
        minutes: list[float | None] = [None] * 60
        for bucket, util, _ in points:
            slot = int((bucket - start) // 60)
            if 0 <= slot < 60:
                minutes[slot] = round(util, 1)
        unit = h.present and allocatable_unit(gpu)
        is_free = bool(unit and gpu.healthy and gpu.uuid not in problems and holds.free(gpu))
        total += 1 if unit else 0
        free += 1 if is_free else 0
        gpus.append(
            {
                "uuid": gpu.uuid,
                "label": gpu.label,
                "model": gpu.model,
                "memory_total": gpu.memory_total,
                "mig_parent": gpu.mig_parent or None,
                "health": health_text(gpu, h.present, problems.get(gpu.uuid)),
                "healthy": h.present and gpu.healthy and gpu.uuid not in problems,
                "free": is_free,
                "held_by": None
                if allocation is None
                else {"user": allocation.user, "server": allocation.server, "since": _iso(allocation.since)},
                "util": None if sample is None else sample.util,
                "memory_used": None
                if sample is None or sample.memory_used_mib is None
                else sample.memory_used_mib * 1024**2,
                "temperature_c": None if sample is None else sample.temperature_c,
                "util_last_hour": minutes,
            }
        )
    return {
        "now": _iso(now),
        "free": free,
        "total": total,
        "islands": nvlink_islands(h.gpu for h in holdings if h.present),
        "gpus": gpus,
        "queue": queue_snapshot(stores),
        "reclaim_warnings": [
            {
                "user": n.user,
                "server": n.server,
                "gpus": n.gpus,
                "warned_at": _iso(n.warned_at),
                "reclaim_at": _iso(n.reclaim_at),
                "message": n.message,
            }
            for n in stores.queue.notices(active_only=True)
            if n.warned_at is not None
        ],
        "polled_at": _iso(datetime.fromtimestamp(max(s.at for s in latest.values()), UTC)) if latest else None,
    }


def queue_snapshot(stores: Stores) -> list[dict[str, Any]]:
    """The waiting spawns in the order the queue will serve them, each with what it waits for
    and its estimated wait (the spawn page's figures, from the GPU queue's own ordering)."""
    entries = stores.queue.waiting()
    if not entries:
        return []
    gpu_queue = stores.gpu_queue
    view = gpu_queue.view(entries)
    # The queue's snapshot and ordering, once for all entries (status() would redo them per entry).
    requests, holdings, free, _, usage = gpu_queue._snapshot(view, entries)
    ordered = gpu_queue._ordered(view, requests, holdings, usage)
    now = stores.queue.now().timestamp()
    by_id = {str(e.id): e for e in entries}
    rows = []
    for request in ordered:
        entry = by_id[request.id]
        estimate = scheduler.estimate_wait(request.id, ordered, free, holdings, now)
        rows.append(
            {
                "position": estimate.position,
                "user": entry.user,
                "server": entry.server,
                "gpus": entry.gpus,
                "waiting_for": estimate.waiting_for,
                "estimated_wait_s": estimate.estimated_wait,
                "submitted_at": _iso(entry.submitted_at),
                "waited_s": max(0.0, now - entry.submitted_at.timestamp()),
            }
        )
    return rows


def board_for(snapshot: dict[str, Any], viewer: Any, policy: Policy | None) -> dict[str, Any]:
    """The snapshot with the names ``viewer`` may not see replaced (``pages.show_names``)."""
    rule = name_rule(policy)
    groups_of = (lambda user: user_groups(policy, user)) if policy is not None else no_groups

    def shown(user: str) -> dict[str, Any]:
        name = visible_name(viewer, user, rule, groups_of)
        return {"user": name or SOMEONE, "mine": user == viewer.name, "hidden": name is None}

    gpus = []
    for gpu in snapshot["gpus"]:
        held = gpu["held_by"]
        if held is not None:
            who = shown(held["user"])
            held = {**held, **who, "server": held["server"] if not who["hidden"] else ""}
        gpus.append({**gpu, "held_by": held})
    queue = []
    for entry in snapshot["queue"]:
        who = shown(entry["user"])
        queue.append({**entry, **who, "server": "" if who["hidden"] else entry["server"]})
    warnings = [
        {**w, **shown(w["user"]), "message": w["message"] if w["user"] == viewer.name or viewer.admin else ""}
        for w in snapshot["reclaim_warnings"]
    ]
    return {**snapshot, "show_names": rule, "gpus": gpus, "queue": queue, "reclaim_warnings": warnings}


def my_servers(board: dict[str, Any], viewer: Any, policy: Policy | None) -> dict[str, Any]:
    """The viewer's servers from their board (GPUs held, since; queue place and estimate) and
    their limits from the quota policy (per server, in all, memory, CPUs, time limits)."""
    servers: dict[str, dict[str, Any]] = {}
    for gpu in board["gpus"]:
        held = gpu["held_by"]
        if held is not None and held["mine"]:
            server = servers.setdefault(held["server"], {"name": held["server"], "gpus": [], "since": held["since"]})
            server["gpus"].append(gpu["label"])
    for entry in board["queue"]:
        if entry["mine"]:
            servers.setdefault(entry["server"], {"name": entry["server"], "gpus": [], "since": None})["queue"] = {
                key: entry[key] for key in ("position", "gpus", "waiting_for", "estimated_wait_s")
            }
    limits = None
    if policy is not None:
        resolved = resolve(policy, viewer.name, viewer.groups)
        limits = {
            "gpus_per_server": resolved.gpus,
            "gpus_total": resolved.gpus_total,
            "memory": resolved.memory,
            "cpus": resolved.cpus,
            "max_runtime_s": resolved.max_runtime,
            "idle_timeout_s": resolved.idle_timeout,
            "text": limits_text(resolved),
        }
    return {"user": viewer.name, "servers": sorted(servers.values(), key=lambda s: s["name"]), "limits": limits}


def limits_text(limits: Limits) -> str:
    parts = [f"{gpus_text(limits.gpus)} per server", f"{gpus_text(limits.gpus_total)} in all"]
    parts.append(f"{format_size(limits.memory)} memory, {limits.cpus:g} CPUs")
    if limits.max_runtime:
        parts.append(f"servers with GPUs stop after {format_duration(limits.max_runtime)}")
    if limits.idle_timeout:
        parts.append(f"idle servers stop after {format_duration(limits.idle_timeout)}")
    return "; ".join(parts)
