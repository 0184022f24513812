"""`labgpu backup DIR` and `labgpu restore DIR`: the hub's state (JupyterHub's database, the GPU
ledger, the cookie secret and the other files of the state directory) copied consistently while
the hub runs, and put back (labgpu/db/backup.py says how). The paths are the hub's own:
$LABGPU_STATE_DIR, $LABGPU_DB_URL and $LABGPU_LEDGER, as jupyterhub_config.py reads them, so in
the hub's container (`docker-compose exec hub labgpu backup /srv/labgpu/backups/DATE`) and in
the systemd unit's environment no option is needed."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from labgpu.db.backup import BackupError, Database, Entry, backup, restore, sqlite_path
from labgpu.hub.resources import default_ledger_path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, func, what in (
        ("backup", run_backup, "copy the hub's state into the new directory DIR, consistently while the hub runs"),
        ("restore", run_restore, "put a backup made by `labgpu backup` back (stop the hub first)"),
    ):
        parser = subparsers.add_parser(name, help=what, description=f"{what}. {__doc__}")
        parser.add_argument("dir", type=Path, metavar="DIR", help="the backup directory")
        parser.add_argument(
            "--state-dir",
            type=Path,
            default=None,
            help="the hub's state directory (default: $LABGPU_STATE_DIR, else ./.state)",
        )
        parser.add_argument(
            "--hub-db",
            default=None,
            metavar="URL",
            help="JupyterHub's database (default: $LABGPU_DB_URL, else jupyterhub.sqlite in the state directory)",
        )
        parser.add_argument(
            "--db",
            default=None,
            metavar="URL",
            help="the GPU ledger (default: $LABGPU_LEDGER, else ledger.sqlite in the state directory)",
        )
        if name == "restore":
            parser.add_argument(
                "--force", action="store_true", help="replace existing databases (the hub must be stopped)"
            )
        parser.set_defaults(func=func)


def _locations(args: argparse.Namespace) -> tuple[Path, list[Database]]:
    state_dir = (args.state_dir or Path(os.environ.get("LABGPU_STATE_DIR", "").strip() or ".state")).resolve()
    hub_db = args.hub_db or os.environ.get("LABGPU_DB_URL", "").strip() or str(state_dir / "jupyterhub.sqlite")
    ledger = args.db or default_ledger_path({**os.environ, "LABGPU_STATE_DIR": str(state_dir)})
    return state_dir, [
        Database("hub-db", sqlite_path(hub_db, "JupyterHub's database (LABGPU_DB_URL)")),
        Database("ledger", sqlite_path(ledger, "the GPU ledger (LABGPU_LEDGER)")),
    ]


def _summary(entries: list[Entry]) -> list[str]:
    lines = []
    for e in entries:
        if e.kind == "sqlite":
            rows = sum(e.tables.values())
            lines.append(f"  {e.name:<28} {e.role:<7} {e.size:>10,} bytes  {len(e.tables)} tables, {rows:,} rows")
        else:
            lines.append(f"  {e.name:<28} {e.role:<7} {e.size:>10,} bytes")
    return lines


def run_backup(args: argparse.Namespace) -> int:
    try:
        state_dir, databases = _locations(args)
        entries = backup(state_dir, databases, args.dir.resolve())
    except (BackupError, OSError) as e:
        print(f"labgpu backup: {e}", file=sys.stderr)
        return 1
    print(f"backed up {state_dir} into {args.dir.resolve()}:")
    print("\n".join(_summary(entries)))
    return 0


def run_restore(args: argparse.Namespace) -> int:
    try:
        state_dir, databases = _locations(args)
        entries = restore(args.dir.resolve(), state_dir, databases, force=args.force)
    except (BackupError, OSError) as e:
        print(f"labgpu restore: {e}", file=sys.stderr)
        return 1
    print(f"restored {args.dir.resolve()} into {state_dir}:")
    print("\n".join(_summary(entries)))
    print("start the hub: it reconciles the ledger with the containers Docker runs now")
    return 0
