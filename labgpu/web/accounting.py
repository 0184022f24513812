"""My usage and lab usage, as plain JSON-ready dicts: the totals are
:func:`labgpu.db.usage.usage_rows` over the same period as ``labgpu usage --since`` (one code
path, so they are equal), the per-day bars split the same held hours at midnights (UTC) and
take busy hours from the hourly telemetry rollups."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from functools import cache, partial
from typing import Any

from labgpu.db.queue_store import GRANTED
from labgpu.db.usage import NO_GROUP, UsageRow, held_per_day, no_groups, usage_rows
from labgpu.fairshare import scheduler
from labgpu.hub.gpu_queue import DEFAULT_HALF_LIFE, PolicyView
from labgpu.quota import Policy, user_groups
from labgpu.web.data import Stores, _iso

HOUR = 3600.0
PERIODS = {"7d": 7, "30d": 30, "90d": 90}
USAGE_COLUMNS = [
    "gpu_hours_held",
    "gpu_hours_busy",
    "efficiency",
    "queued",
    "mean_wait_hours",
    "max_wait_hours",
    "reclaims",
    "reclaimed_gpu_hours",
]
# The CSV header of `labgpu usage --csv` for those columns (its figures are rounded, ours not).
CSV_HEADER = [
    "gpu_h_held",
    "gpu_h_busy",
    "efficiency",
    "queued",
    "mean_wait_h",
    "max_wait_h",
    "reclaims",
    "reclaimed_gpu_h",
]


def row_dict(row: UsageRow) -> dict[str, Any]:
    """A usage row with the figures ``labgpu usage`` prints (unrounded)."""
    return {
        "name": row.name,
        "gpu_hours_held": row.gpu_hours_held,
        "gpu_hours_busy": row.gpu_hours_busy,
        "efficiency": row.efficiency,
        "queued": row.queued,
        "mean_wait_hours": row.mean_wait_hours,
        "max_wait_hours": row.wait_hours_max if row.queued else None,
        "reclaims": row.reclaims,
        "reclaimed_gpu_hours": row.reclaimed_gpu_hours,
    }


def period_bounds(stores: Stores, days: int) -> tuple[datetime, datetime]:
    until = stores.queue.now()
    return until - timedelta(days=days), until


def day_list(since: datetime, until: datetime) -> list[date]:
    first, last = since.date(), until.date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def daily(
    held: dict[str, dict[date, float]], busy: dict[str, dict[date, float]], days: list[date], has_busy: bool
) -> list[dict[str, Any]]:
    """Per day: GPU-hours held and busy summed over the given users' maps."""
    # Each user's map read once (not once a day), added in the same order as sum() would.
    held_h: dict[date, float] = dict.fromkeys(days, 0.0)
    busy_h: dict[date, float] = dict.fromkeys(days, 0.0)
    for totals, maps in ((held_h, held), (busy_h, busy)):
        for per in maps.values():
            for day, hours in per.items():
                if day in totals:
                    totals[day] += hours
    return [
        {"day": day.isoformat(), "gpu_hours_held": held_h[day], "gpu_hours_busy": busy_h[day] if has_busy else None}
        for day in days
    ]


def my_usage(stores: Stores, user: str, days: int) -> dict[str, Any]:
    """One user's page: totals, per day, queue waits, reclaim notices, sessions."""
    since, until = period_bounds(stores, days)
    held = stores.queue.held_intervals(since, until)
    busy_days: dict[str, dict[date, float]] = {}
    # busy_hours_of's figures, for this user only
    busy = stores.views.busy_hours(since.timestamp(), until.timestamp(), busy_days, [user])
    rows = usage_rows(stores.queue, since, until, busy_hours=busy, held=held, user=user)
    mine = next((r for r in rows if r.name == user), UsageRow(user, gpu_hours_busy=None if busy is None else 0.0))
    waits = [
        {
            "server": e.server,
            "gpus": e.gpus,
            "submitted_at": _iso(e.submitted_at),
            "ended_at": _iso(e.ended_at),
            "status": e.status,
            "waited_hours": ((e.ended_at or until) - e.submitted_at).total_seconds() / HOUR,
            "reason": e.reason,
        }
        for e in stores.queue.history(since, user)
    ]
    notices = [
        {
            "server": n.server,
            "gpus": n.gpus,
            "warned_at": _iso(n.warned_at),
            "reclaim_at": _iso(n.reclaim_at),
            "reclaimed_at": _iso(n.reclaimed_at),
            "reason": n.reason,
            "message": n.message,
            "idle_hours": n.idle_for / HOUR,
        }
        for n in stores.queue.notices_for(user, since)
        if n.warned_at is not None or n.reclaimed_at is not None
    ]
    sessions = [
        {
            "server": s.server,
            "image": s.image,
            "image_digest": s.image_digest,
            "driver_version": s.driver_version,
            "cuda_version": s.cuda_version,
            "torch_version": s.torch_version,
            "gpus": list(s.gpu_uuids),
            "started_at": _iso(s.started_at),
            "ended_at": _iso(s.ended_at),
            "end_reason": s.end_reason,
        }
        for s in stores.sessions.sessions(since=since, user=user)
    ]
    return {
        "user": user,
        "since": _iso(since),
        "until": _iso(until),
        "days": days,
        "totals": row_dict(mine),
        "per_day": daily(held_per_day(held, since, until, [user]), busy_days, day_list(since, until), busy is not None),
        "queue_waits": waits,
        "granted_waits": sum(1 for w in waits if w["status"] == GRANTED),
        "reclaim_notices": notices,
        "sessions": sessions,
    }


def _fairshare(stores: Stores, policy: Policy | None, users: Sequence[str]) -> dict[str, float]:
    """Each user's fair-share factor now (1: untouched share, toward 0: used a lot), as the queue
    orders by: usage decayed with ``fairshare.half_life`` over ten half-lives of holdings. The
    decayed usage is recomputed at most once a minute (at a 7-day half-life it moves by 0.007%
    a minute)."""
    view = PolicyView(policy)
    half_life = policy.spec.fairshare.half_life if policy is not None else DEFAULT_HALF_LIFE

    def decayed() -> dict[str, float]:
        now = stores.queue.now()
        spans: dict[str, list[tuple[float, float | None, float]]] = {}
        for held in stores.queue.held_intervals(now - timedelta(seconds=10 * half_life), now):
            end = None if held.end is None else held.end.timestamp()
            spans.setdefault(held.user, []).append((held.start.timestamp(), end, float(held.gpus)))
        return {u: scheduler.usage_from_intervals(s, now.timestamp(), half_life) for u, s in spans.items()}

    usage: dict[str, float] = stores.fairshare_usage.get(decayed)
    everyone = sorted(set(users) | set(usage))
    return scheduler.fairshare_factors(usage, view.shares(everyone), everyone)


def _idlest_first(row: dict[str, Any]) -> tuple[float, float]:
    """Least busy first (no telemetry last), then the longest held."""
    busy = row["busy_last_hour"]
    return (2.0 if busy is None else busy, -row["held_hours"])


def lab_usage(stores: Stores, policy: Policy | None, days: int, group: str | None = None) -> dict[str, Any]:
    """The lab page (admins; a group's managers with ``group``): per user and per group over the
    period, per day, fair-share factors, pools, the idlest current holders."""
    since, until = period_bounds(stores, days)
    # One answer per user for the whole page (user_groups is asked for every interval otherwise).
    groups_of: Callable[[str], Sequence[str]] = cache(partial(user_groups, policy)) if policy is not None else no_groups
    held = stores.queue.held_intervals(since, until)
    history = stores.queue.history(since)
    busy_days: dict[str, dict[date, float]] = {}
    busy = stores.views.busy_hours(since.timestamp(), until.timestamp(), busy_days)  # = busy_hours_of
    by_user = usage_rows(stores.queue, since, until, busy_hours=busy, held=held, history=history)
    by_group = usage_rows(
        stores.queue, since, until, by="group", groups_of=groups_of, busy_hours=busy, held=held, history=history
    )
    if group is not None:
        by_user = [r for r in by_user if group in groups_of(r.name)]
        by_group = [r for r in by_group if r.name == group]
    users = [r.name for r in by_user]
    held_days = held_per_day(held, since, until, users)
    busy_days = {u: busy_days[u] for u in users if u in busy_days}
    factors = _fairshare(stores, policy, users)
    allocations = stores.ledger.allocations()
    pools = []
    if policy is not None:
        for name, entry in sorted(policy.spec.groups.items()):
            if entry.pool is None or (group is not None and name != group):
                continue
            in_use = sum(len(a.gpu_uuids) for a in allocations if a.group == name)
            pools.append({"group": name, "pool": entry.pool, "held": in_use})
    now = until.timestamp()
    # Busy share of each holder's GPUs over the last hour (or since the grant), from the minute
    # rollups: one read for all GPUs instead of one query per allocation.
    minutes = stores.views.minute_series(now - HOUR, now)
    idle: list[dict[str, Any]] = []
    for a in allocations:
        if not a.gpu_uuids or (group is not None and group not in groups_of(a.user)):
            continue
        start = max(a.since.timestamp(), now - HOUR)
        utils = [u for uuid in a.gpu_uuids for bucket, u, _ in minutes.get(uuid, ()) if bucket >= start - start % 60]
        idle.append(
            {
                "user": a.user,
                "server": a.server,
                "gpus": len(a.gpu_uuids),
                "since": _iso(a.since),
                "busy_last_hour": sum(utils) / len(utils) / 100 if utils else None,
                "held_hours": (now - a.since.timestamp()) / HOUR,
            }
        )
    idle.sort(key=_idlest_first)
    return {
        "since": _iso(since),
        "until": _iso(until),
        "days": days,
        "group": group,
        "by_user": [{**row_dict(r), "fairshare_factor": factors.get(r.name)} for r in by_user],
        "by_group": [row_dict(r) for r in by_group if group is not None or r.name != NO_GROUP or r.gpu_hours_held],
        "per_day": daily(held_days, busy_days, day_list(since, until), busy is not None),
        "pools": pools,
        "top_idle_holders": idle[:10],
    }


def usage_csv(rows: Sequence[dict[str, Any]], first: str) -> str:
    """Rows of :func:`row_dict` as CSV under ``labgpu usage --csv``'s header."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([first, *CSV_HEADER])
    for row in rows:
        writer.writerow([row["name"], *("" if row[c] is None else row[c] for c in USAGE_COLUMNS)])
    return out.getvalue()


def table_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return out.getvalue()
