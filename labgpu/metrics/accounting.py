"""The exporter's counters, kept up to date from what was recorded since the previous scrape.

Pure: plain rows in (audit rows, ended queue entries, busy seconds), running totals out. A
Prometheus counter must never go down while its process lives, and a scrape must not re-read
the whole history, so each account remembers how far it has read (a watermark) and adds only
what came after it. A restarted exporter starts again from the whole history (Prometheus sees
a counter reset only if the totals shrank, which they do not).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from labgpu.fairshare.scheduler import decayed_usage, usage_from_intervals

# Seconds: from a grant that came at once to a day-long wait (the queue's default timeout).
WAIT_BUCKETS: tuple[float, ...] = (10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400)


class AuditLike(Protocol):
    """One row of the allocation audit (:class:`labgpu.db.metrics_store.AuditRow`)."""

    @property
    def id(self) -> int: ...
    @property
    def at(self) -> datetime: ...
    @property
    def action(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def gpus(self) -> int: ...
    @property
    def allocation_id(self) -> int: ...
    @property
    def group(self) -> str: ...


class HubEventLike(Protocol):
    """A refusal or a reconcile finding (:class:`labgpu.db.hub_events.HubEvent`)."""

    @property
    def id(self) -> int: ...
    @property
    def at(self) -> datetime: ...
    @property
    def kind(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def count(self) -> int: ...


class QueueRowLike(Protocol):
    """A queue entry (:class:`labgpu.db.metrics_store.QueueRow`)."""

    @property
    def id(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def submitted_at(self) -> datetime: ...
    @property
    def ended_at(self) -> datetime | None: ...


@dataclass(frozen=True)
class _Open:
    user: str
    group: str
    gpus: int
    start: float


@dataclass
class HeldAccount:
    """GPU-seconds held per (user, charged group), allocation events per action, and each user's
    fair-share usage (GPU-seconds decayed with ``half_life``, as the queue orders by), from the
    allocation audit read in id order."""

    half_life: float
    last_id: int = 0
    events: dict[str, int] = field(default_factory=dict)
    last_group: dict[str, str] = field(default_factory=dict)
    _open: dict[int, _Open] = field(default_factory=dict)
    _closed_s: dict[tuple[str, str], float] = field(default_factory=dict)
    _decayed: dict[str, tuple[float, float]] = field(default_factory=dict)  # user -> (usage, at)

    def add(self, rows: Iterable[AuditLike]) -> None:
        """Audit rows after :attr:`last_id`, in id order."""
        for row in rows:
            self.last_id = max(self.last_id, row.id)
            self.events[row.action] = self.events.get(row.action, 0) + 1
            at = row.at.timestamp()
            if row.action in ("grant", "adopt"):
                if row.gpus:
                    self._open[row.allocation_id] = _Open(row.user, row.group, row.gpus, at)
                self.last_group[row.user] = row.group
            elif row.action == "release":
                held = self._open.pop(row.allocation_id, None)
                if held is None:
                    continue  # granted before the audit began: nothing to count
                key = (held.user, held.group)
                self._closed_s[key] = self._closed_s.get(key, 0.0) + max(0.0, at - held.start) * held.gpus
                usage, since = self._decayed.get(held.user, (0.0, at))
                interval = usage_from_intervals([(held.start, at, float(held.gpus))], at, self.half_life)
                self._decayed[held.user] = (decayed_usage(usage, min(since, at), at, self.half_life) + interval, at)

    def held_seconds(self, now: float) -> dict[tuple[str, str], float]:
        """GPU-seconds held so far per (user, group): released allocations, and the ones still
        held up to ``now``."""
        totals = dict(self._closed_s)
        for held in self._open.values():
            key = (held.user, held.group)
            totals[key] = totals.get(key, 0.0) + max(0.0, now - held.start) * held.gpus
        return totals

    def usage(self, now: float) -> dict[str, float]:
        """Each user's decayed usage at ``now`` (:func:`labgpu.fairshare.scheduler.usage_from_intervals`
        of all their allocations)."""
        usage = {
            user: decayed_usage(value, min(at, now), now, self.half_life) for user, (value, at) in self._decayed.items()
        }
        for held in self._open.values():
            usage[held.user] = usage.get(held.user, 0.0) + usage_from_intervals(
                [(held.start, None, float(held.gpus))], now, self.half_life
            )
        return usage


@dataclass
class BusyAccount:
    """Busy GPU-seconds per user from the telemetry, read past a watermark (ms of the newest
    raw sample read); ``started`` once the whole history has been read."""

    busy_s: dict[str, float] = field(default_factory=dict)
    watermark_ms: int = 0
    started: bool = False

    def add(self, busy: Mapping[str, float], watermark_ms: int) -> None:
        for user, seconds in busy.items():
            self.busy_s[user] = self.busy_s.get(user, 0.0) + seconds
        self.watermark_ms = max(self.watermark_ms, watermark_ms)
        self.started = True


@dataclass
class QueueAccount:
    """How spawns left the GPU queue (granted, cancelled, abandoned) and how long the granted
    ones waited, as a cumulative histogram. Reads entries past the highest id seen, and again
    the ones still waiting then (:attr:`waiting_ids`), so each ended entry is counted once."""

    buckets: Sequence[float] = WAIT_BUCKETS
    exits: dict[str, int] = field(default_factory=dict)
    bucket_counts: list[int] = field(default_factory=list)
    wait_sum: float = 0.0
    wait_count: int = 0
    last_id: int = 0
    waiting_ids: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.bucket_counts:
            self.bucket_counts = [0] * len(self.buckets)

    def add(self, entries: Iterable[QueueRowLike]) -> None:
        """Entries after :attr:`last_id` and those of :attr:`waiting_ids`, as they are now."""
        for entry in entries:
            self.last_id = max(self.last_id, entry.id)
            if entry.status == "waiting" or entry.ended_at is None:
                self.waiting_ids.add(entry.id)
                continue
            if entry.id in self.waiting_ids:
                self.waiting_ids.discard(entry.id)
            self.exits[entry.status] = self.exits.get(entry.status, 0) + 1
            if entry.status != "granted":
                continue
            waited = max(0.0, (entry.ended_at - entry.submitted_at).total_seconds())
            self.wait_sum += waited
            self.wait_count += 1
            for i, bound in enumerate(self.buckets):
                if waited <= bound:
                    self.bucket_counts[i] += 1

    def histogram(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs, +Inf last, as Prometheus histograms want them."""
        return [(_le(bound), float(n)) for bound, n in zip(self.buckets, self.bucket_counts, strict=True)] + [
            ("+Inf", float(self.wait_count))
        ]


@dataclass
class EventAccount:
    """Refusals per reason, reconcile findings per kind in total and at the last reconcile, from
    the append-only hub events read in id order."""

    last_id: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    drift: dict[str, int] = field(default_factory=dict)
    last_reconcile: datetime | None = None
    last_drift: dict[str, int] = field(default_factory=dict)

    def add(self, events: Iterable[HubEventLike]) -> None:
        for event in events:
            self.last_id = max(self.last_id, event.id)
            if event.kind == "refusal":
                self.refusals[event.reason] = self.refusals.get(event.reason, 0) + event.count
            elif event.kind == "reconcile":
                self.drift[event.reason] = self.drift.get(event.reason, 0) + event.count
                if self.last_reconcile is None or event.at > self.last_reconcile:
                    self.last_reconcile, self.last_drift = event.at, {}
                if event.at == self.last_reconcile:
                    self.last_drift[event.reason] = self.last_drift.get(event.reason, 0) + event.count


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else f"{bound:g}"
