"""`labgpu migrate-ledger SOURCE TARGET`: move a lab's ledger to another database, typically from
its SQLite file to PostgreSQL, when one hub process is no longer enough (several GPU servers
behind one hub, a standby hub, a hub on Kubernetes).

Every table moves: allocations and their audit, the queue and reclaim notices, sessions,
telemetry (samples and rollups), volume sizes and the rest, then the two are compared table by
table (rows, and the sum of every numeric column) and by the GPU-hours each user held. The
target must be a new, empty database (created with `createdb`); both are migrated to the
newest schema first. Stop the hub and its services first; afterwards set
LABGPU_LEDGER=postgresql://... for the hub and its services and start them again.
"""

from __future__ import annotations

import argparse
import sys

from labgpu.cli.options import missing_ledger
from labgpu.cli.table import format_table


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "migrate-ledger",
        help="move the ledger to another database (SQLite to PostgreSQL), checked by counts and totals",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="SQLITE_URL", help="the ledger now: a path or sqlite:///path")
    parser.add_argument(
        "target", metavar="POSTGRES_URL", help="the new, empty database: postgresql://user:password@host:5432/labgpu"
    )
    parser.set_defaults(func=run_migrate_ledger)


def run_migrate_ledger(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    from labgpu.db.ledger_copy import LedgerCopyError, copy_ledger

    missing = missing_ledger(args.source)
    if missing is not None:
        print(f"labgpu migrate-ledger: no ledger at {missing}; pass the hub's ledger file", file=sys.stderr)
        return 1
    try:
        report = copy_ledger(args.source, args.target, progress=lambda table, rows: print(f"  {table}: {rows} rows"))
    except LedgerCopyError as exc:
        print(f"labgpu migrate-ledger: {exc}", file=sys.stderr)
        return 1
    except OperationalError as exc:
        print(f"labgpu migrate-ledger: cannot open a database: {str(exc.orig).strip()}", file=sys.stderr)
        return 1
    rows = [[c.table, str(c.source_rows), str(c.target_rows), "ok" if c.ok else "DIFFERS"] for c in report.tables]
    print(format_table([["TABLE", "SOURCE ROWS", "TARGET ROWS", "CHECK"], *rows], right_aligned={1, 2}))
    held = sum(report.source_gpu_hours.values())
    shown = make_url(args.target).render_as_string(hide_password=True)
    print(
        f"copied {report.rows} rows; GPU-hours held per user match ({held:.1f} in all, "
        f"{len(report.source_gpu_hours)} users). Now set LABGPU_LEDGER={shown} for the hub and its services."
    )
    return 0
