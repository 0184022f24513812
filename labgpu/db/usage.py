"""GPU accounting from the ledger, one code path for `labgpu usage` and the hub's usage pages:
GPU-hours held (allocations), busy (the poller's telemetry in the same database, if any),
efficiency = busy / held, spawns that waited in the GPU queue (mean and longest wait), and
servers reclaimed for idleness with the idle GPU-hours they held; and the same held hours per
day, for the pages' charts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from labgpu.db.queue_store import GRANTED, HeldInterval, QueueEntry, QueueStore

HOUR = 3600.0
DAY = 86400.0
EPOCH = date(1970, 1, 1)
NO_GROUP = "(no group)"


@dataclass
class UsageRow:
    """One user's or group's figures over the period."""

    name: str
    gpu_hours_held: float = 0.0
    gpu_hours_busy: float | None = None  # None: no telemetry for the period
    queued: int = 0  # spawns that waited in the GPU queue and got their GPUs
    wait_hours_total: float = 0.0
    wait_hours_max: float = 0.0
    reclaims: int = 0
    reclaimed_gpu_hours: float = 0.0  # GPU-hours the reclaimed servers had sat idle

    @property
    def efficiency(self) -> float | None:
        if self.gpu_hours_busy is None or self.gpu_hours_held <= 0:
            return None
        return self.gpu_hours_busy / self.gpu_hours_held

    @property
    def mean_wait_hours(self) -> float | None:
        return self.wait_hours_total / self.queued if self.queued else None


def no_groups(user: str) -> Sequence[str]:
    """--by user: no groups are looked up."""
    return ()


def usage_rows(
    store: QueueStore,
    since: datetime,
    until: datetime,
    *,
    by: str = "user",
    groups_of: Callable[[str], Sequence[str]] = no_groups,
    busy_hours: dict[str, float] | None = None,
    held: Iterable[HeldInterval] | None = None,
    user: str | None = None,
    history: Iterable[QueueEntry] | None = None,
) -> list[UsageRow]:
    """Figures per user (or per group) over [since, until); ``busy_hours`` per user comes from
    telemetry when there is any; ``held``: the store's ``held_intervals(since, until)`` when the
    caller has read them already (``history``: ``store.history(since, user)``, likewise);
    ``user``: that user's figures only (their page). Per group,
    GPUs held and queue waits count for the group the ledger charged them to (the spawn's
    choice, recorded since migration 0009); what carries no group (older rows, reclaims, busy
    hours) counts in each of the user's groups."""
    rows: dict[str, UsageRow] = {}

    def keys(user: str, charged: str = "") -> Sequence[str]:
        if by == "user":
            return (user,)
        if charged:
            return (charged,)
        return tuple(groups_of(user)) or (NO_GROUP,)

    def row(key: str) -> UsageRow:
        found = rows.get(key)
        if found is None:  # not setdefault: that would build a row for every interval
            found = rows[key] = UsageRow(key)
        return found

    for interval in store.held_intervals(since, until) if held is None else held:
        if user is not None and interval.user != user:
            continue
        end = min(interval.end or until, until)
        hours = max(0.0, (end - max(interval.start, since)).total_seconds()) * interval.gpus / HOUR
        for key in keys(interval.user, interval.group):
            row(key).gpu_hours_held += hours
    for entry in store.history(since, user) if history is None else history:
        if entry.status != GRANTED or entry.ended_at is None or entry.ended_at >= until:
            continue
        waited = (entry.ended_at - entry.submitted_at).total_seconds() / HOUR
        for key in keys(entry.user, entry.group):
            r = row(key)
            r.queued += 1
            r.wait_hours_total += waited
            r.wait_hours_max = max(r.wait_hours_max, waited)
    for notice in store.notices():
        if (
            (user is not None and notice.user != user)
            or notice.reclaimed_at is None
            or not since <= notice.reclaimed_at < until
        ):
            continue
        for key in keys(notice.user):
            row(key).reclaims += 1
            row(key).reclaimed_gpu_hours += notice.gpus * notice.idle_for / HOUR
    if busy_hours is not None:
        for r in rows.values():
            r.gpu_hours_busy = 0.0
        for who, hours in busy_hours.items():
            if user is not None and who != user:
                continue
            for key in keys(who):
                r = row(key)
                r.gpu_hours_busy = (r.gpu_hours_busy or 0.0) + hours
    return sorted(rows.values(), key=lambda r: (-r.gpu_hours_held, r.name))


def busy_hours_of(ledger_url: str, since: datetime, until: datetime) -> dict[str, float] | None:
    """GPU-hours busy per user from the poller's telemetry, or None when it has recorded nothing
    (or the ledger has no telemetry tables yet)."""
    from labgpu.db.telemetry_views import TelemetryViews

    with TelemetryViews(ledger_url) as views:
        return views.busy_hours(since.timestamp(), until.timestamp())


def held_per_day(
    intervals: Iterable[HeldInterval], since: datetime, until: datetime, users: Iterable[str] | None = None
) -> dict[str, dict[date, float]]:
    """GPU-hours held per user per (UTC) day over [since, until): the hours ``usage_rows`` counts,
    split at midnights, so a user's days add up to their ``gpu_hours_held``."""
    wanted = None if users is None else set(users)
    days: dict[str, dict[date, float]] = {}
    dates: dict[float, date] = {}
    first, last = since.timestamp(), until.timestamp()
    for held in intervals:
        if wanted is not None and held.user not in wanted:
            continue
        start = max(held.start.timestamp(), first)
        end = min(held.end.timestamp() if held.end is not None else last, last)
        per_user = days.setdefault(held.user, {})
        while start < end:
            midnight = (start // DAY + 1) * DAY  # UTC
            stop = min(end, midnight)
            day = dates.get(start // DAY) or dates.setdefault(start // DAY, EPOCH + timedelta(days=int(start // DAY)))
            per_user[day] = per_user.get(day, 0.0) + (stop - start) * held.gpus / HOUR
            start = stop
    return days
