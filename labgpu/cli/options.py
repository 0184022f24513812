"""The options several `labgpu` subcommands share, defined once so that they read and default the
same everywhere: where the ledger is (``--db``), where the quota files are (``--quotas``), and
durations written as in the quota files (``90s``, ``15m``, ``2h``).

The libraries behind them (SQLAlchemy, the quota policy) are imported when an option is used,
not when a subcommand registers it: `labgpu` lists every subcommand even where one of them
cannot run (see :func:`labgpu.cli.main.build_parser`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

LEDGER_HELP = (
    "the ledger: an SQLite file or an SQLAlchemy URL (default: $LABGPU_LEDGER, else ledger.sqlite "
    "in $LABGPU_STATE_DIR or ./.state: the hub's own ledger)"
)


def add_ledger_option(parser: argparse.ArgumentParser) -> None:
    """``--db URL``: the hub's ledger; read it back with :func:`ledger_url`."""
    parser.add_argument("--db", default=None, metavar="URL", help=LEDGER_HELP)


def ledger_url(args: argparse.Namespace) -> str:
    """The ledger named by ``--db``, else the hub's default one."""
    from labgpu.hub.resources import default_ledger_path

    return str(args.db or default_ledger_path())


def missing_ledger(url: str) -> Path | None:
    """The SQLite file ``url`` names when it does not exist (a command that only reads must not
    create an empty ledger), else None (it exists, or the URL is another database's)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url if "://" in url else f"sqlite:///{url}")
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


def no_ledger_message(command: str, path: Path) -> str:
    """What a reading subcommand says when :func:`missing_ledger` found no ledger."""
    return f"labgpu {command}: no ledger at {path}; pass the hub's --db URL (or set $LABGPU_LEDGER / $LABGPU_STATE_DIR)"


def add_quotas_option(parser: argparse.ArgumentParser, purpose: str = "") -> None:
    """``--quotas PATHS``: the quota files; read them back with :func:`quota_paths`."""
    parser.add_argument(
        "--quotas",
        default=None,
        metavar="PATHS",
        help=f"quota files or directories, comma-separated{purpose} (default: $LABGPU_QUOTAS)",
    )


def quota_paths(args: argparse.Namespace) -> list[str]:
    """The quota files named by ``--quotas``, else $LABGPU_QUOTAS, else the repository's example."""
    from labgpu.quota import default_paths, split_paths

    return split_paths(args.quotas) if args.quotas else default_paths()


def duration_seconds(text: str) -> float:
    """An argparse ``type``: '90s', '15m', '2h' -> seconds, or a usage error that shows the form."""
    from labgpu.units import parse_duration

    try:
        return float(parse_duration(text))
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 90s, 15m, 2h): {e}") from None
