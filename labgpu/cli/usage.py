"""`labgpu usage`: GPU accounting from the ledger, per user or per group: GPU-hours held
(allocations), busy (the poller's telemetry in the same database, if any), efficiency = busy /
held, spawns that waited in the GPU queue (mean and longest wait), and servers reclaimed for
idleness with the idle GPU-hours they held. The figures come from labgpu.db.usage, as the hub's
usage pages' do.

A user's groups are those whose members lists in the quota files name the user: this command has
no hub token, so a group the hub alone gives (from OAuth, say) does not count here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
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
from labgpu.db.queue_store import QueueStore
from labgpu.db.usage import busy_hours_of, no_groups, usage_rows
from labgpu.quota import PolicyError, load_policy, user_groups
from labgpu.units import parse_duration


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
            store, since, until, by=args.by, groups_of=groups_of, busy_hours=busy_hours_of(ledger.url, since, until)
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
