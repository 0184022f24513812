"""`labgpu usage`: GPU accounting from the ledger, per user or per group: GPU-hours held
(allocations), busy (the poller's telemetry in the same database, if any), efficiency = busy /
held, spawns that waited in the GPU queue (mean and longest wait), and servers reclaimed for
idleness with the idle GPU-hours they held.

A user's groups are those whose members lists in the quota files name the user: this command has
no hub token, so a group the hub alone gives (from OAuth, say) does not count here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

from labgpu.cli.options import (
    add_ledger_option,
    add_quotas_option,
    ledger_url,
    missing_ledger,
    no_ledger_message,
    quota_paths,
)
from labgpu.cli.table import format_table, write_csv
from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import GRANTED, QueueStore
from labgpu.quota import PolicyError, load_policy, user_groups
from labgpu.units import parse_duration

HOUR = 3600.0
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
) -> list[UsageRow]:
    """Figures per user (or per group: a user in several groups counts in each) over
    [since, until); ``busy_hours`` per user comes from telemetry when there is any."""
    rows: dict[str, UsageRow] = {}

    def keys(user: str) -> Sequence[str]:
        if by == "user":
            return (user,)
        return tuple(groups_of(user)) or (NO_GROUP,)

    def row(key: str) -> UsageRow:
        return rows.setdefault(key, UsageRow(key))

    for held in store.held_intervals(since, until):
        end = min(held.end or until, until)
        hours = max(0.0, (end - max(held.start, since)).total_seconds()) * held.gpus / HOUR
        for key in keys(held.user):
            row(key).gpu_hours_held += hours
    for entry in store.history(since):
        if entry.status != GRANTED or entry.ended_at is None or entry.ended_at >= until:
            continue
        waited = (entry.ended_at - entry.submitted_at).total_seconds() / HOUR
        for key in keys(entry.user):
            r = row(key)
            r.queued += 1
            r.wait_hours_total += waited
            r.wait_hours_max = max(r.wait_hours_max, waited)
    for notice in store.notices():
        if notice.reclaimed_at is None or not since <= notice.reclaimed_at < until:
            continue
        for key in keys(notice.user):
            row(key).reclaims += 1
            row(key).reclaimed_gpu_hours += notice.gpus * notice.idle_for / HOUR
    if busy_hours is not None:
        for r in rows.values():
            r.gpu_hours_busy = 0.0
        for user, hours in busy_hours.items():
            for key in keys(user):
                r = row(key)
                r.gpu_hours_busy = (r.gpu_hours_busy or 0.0) + hours
    return sorted(rows.values(), key=lambda r: (-r.gpu_hours_held, r.name))


def _busy_hours(ledger_url: str, since: datetime, until: datetime) -> dict[str, float] | None:
    """GPU-hours busy per user from the poller's telemetry, or None when it has recorded nothing."""
    try:
        from labgpu.db.telemetry_store import TelemetryDB

        report = TelemetryDB(ledger_url, migrate=False).usage(since.timestamp(), until.timestamp())
    except Exception:  # no telemetry tables (no poller yet): report held hours only
        return None
    if not report.by_user:
        return None
    return {user: usage.gpu_hours_busy for user, usage in report.by_user.items()}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "usage",
        help="GPU-hours held and busy, efficiency, queue waits, reclaims per user or group",
        description=__doc__,
    )
    parser.add_argument("--since", default="30d", metavar="DURATION", help="period ending now (default 30d)")
    parser.add_argument("--by", choices=("user", "group"), default="user", help="one row per user (default) or group")
    parser.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    parser.add_argument(
        "--sessions",
        action="store_true",
        help="list workspace sessions instead: image and digest, driver, CUDA and torch versions, "
        "GPUs, start and end (what to cite to reproduce a result)",
    )
    add_ledger_option(parser)
    add_quotas_option(parser, ", for --by group")
    parser.set_defaults(func=run_usage)


def _fmt(value: float | None, pattern: str = "{:.1f}") -> str:
    return "-" if value is None else pattern.format(value)


def _print_table(header: list[str], table: list[list[str]], as_csv: bool) -> None:
    """Figures right-aligned under their header, the name column left; or CSV."""
    if as_csv:
        write_csv(header, table)
    else:
        print(format_table([header, *table], right_aligned=range(1, len(header))))


def print_sessions(url: str, period: float, as_csv: bool) -> int:
    """`labgpu usage --sessions`: one row per workspace run, newest last."""
    from labgpu.db.session_store import SessionStore

    with Ledger(url) as ledger:
        store = SessionStore(ledger)
        since = datetime.now(UTC) - timedelta(seconds=period)
        sessions = store.sessions(since=since)
        store.close()
    header = ["SERVER", "STARTED", "ENDED", "IMAGE", "DIGEST", "DRIVER", "CUDA", "TORCH", "GPUS"]
    stamp = "%Y-%m-%d %H:%M"
    table = [
        [
            s.server_label,
            s.started_at.strftime(stamp),
            s.ended_at.strftime(stamp) if s.ended_at else "running",
            s.image,
            s.image_digest if as_csv else s.image_digest[:19],
            s.driver_version or "-",
            s.cuda_version or "-",
            s.torch_version or "-",
            ",".join(s.gpu_uuids) or "-",
        ]
        for s in sessions
    ]
    if not table and not as_csv:
        print("No workspace sessions in that period.")
        return 0
    _print_table(header, table, as_csv)
    return 0


def run_usage(args: argparse.Namespace) -> int:
    try:
        period = parse_duration(args.since)
    except ValueError as e:
        print(f"labgpu usage: --since {e}", file=sys.stderr)
        return 2
    url = ledger_url(args)
    missing = missing_ledger(url)
    if missing is not None:
        print(no_ledger_message("usage", missing), file=sys.stderr)
        return 1
    if args.sessions:
        return print_sessions(url, period, args.csv)
    groups_of: Callable[[str], Sequence[str]] = no_groups
    if args.by == "group":
        try:
            # The groups whose members lists name the user: no hub token here for the hub's groups.
            groups_of = partial(user_groups, load_policy(quota_paths(args)))
        except PolicyError as e:
            print(f"labgpu usage: --by group needs the quota policy: {e}", file=sys.stderr)
            return 1
    with Ledger(url) as ledger:
        store = QueueStore(ledger)
        until = store.now()
        since = until - timedelta(seconds=period)
        rows = usage_rows(
            store, since, until, by=args.by, groups_of=groups_of, busy_hours=_busy_hours(ledger.url, since, until)
        )
        store.close()
    header = [
        args.by.upper(),
        "GPU-H HELD",
        "GPU-H BUSY",
        "EFFICIENCY",
        "QUEUED",
        "MEAN WAIT H",
        "MAX WAIT H",
        "RECLAIMS",
        "RECLAIMED GPU-H",
    ]
    table = [
        [
            r.name,
            _fmt(r.gpu_hours_held),
            _fmt(r.gpu_hours_busy),
            _fmt(r.efficiency, "{:.0%}"),
            str(r.queued),
            _fmt(r.mean_wait_hours, "{:.2f}"),
            _fmt(r.wait_hours_max if r.queued else None, "{:.2f}"),
            str(r.reclaims),
            _fmt(r.reclaimed_gpu_hours),
        ]
        for r in rows
    ]
    if not table and not args.csv:
        print(f"No GPU use in the last {args.since}.")
        return 0
    _print_table(header, table, args.csv)
    return 0
