"""`labgpu gpus [--db URL] [--source nvml|static:FILE|replay:FILE] [--json]`: the GPU inventory
and who holds each GPU, as the ledger records it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url

from labgpu.db.ledger import Ledger
from labgpu.gpus.allocator import Allocation
from labgpu.gpus.inventory import Gpu, InventoryError, gpu_to_dict, inventory_source, mig_units
from labgpu.hub.resources import default_ledger_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gpus",
        help="list the GPUs and who holds each one",
        description="List the GPUs (from the inventory source, or as the ledger recorded them) and, "
        "with a ledger, which user/server holds each GPU and since when. Reads only.",
    )
    parser.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help="the ledger: an SQLAlchemy URL or an SQLite file path (default: $LABGPU_LEDGER, "
        "else ledger.sqlite in $LABGPU_STATE_DIR or ./.state, when it exists)",
    )
    parser.add_argument(
        "--source",
        default=os.environ.get("LABGPU_GPU_SOURCE"),
        metavar="SPEC",
        help="where the inventory comes from: nvml, static:FILE or replay:FILE "
        "(default: $LABGPU_GPU_SOURCE; without it and --db: nvml)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run_gpus)


def _sqlite_file(url: str) -> Path | None:
    text = url if "://" in url else f"sqlite:///{url}"
    parsed = make_url(text)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database)
    return None


def _memory(size: int) -> str:
    return f"{size / 1024**3:.0f} GiB" if size >= 1024**3 else f"{size / 1024**2:.0f} MiB"


def _health(gpu: Gpu, present: bool) -> str:
    if not present:
        return "gone"
    if not gpu.healthy:
        return f"UNHEALTHY: {gpu.health_reason}" if gpu.health_reason else "UNHEALTHY"
    if gpu.mig_enabled:
        return f"ok, MIG mode ({len(gpu.mig_devices)} slices)"
    return "ok, MIG slice" if gpu.mig_parent else "ok"


def _since(allocation: Allocation, now: datetime) -> str:
    since = allocation.since.astimezone()
    return since.strftime("%H:%M") if since.date() == now.astimezone().date() else since.strftime("%Y-%m-%d %H:%M")


def _islands(gpus: list[Gpu]) -> list[list[int]]:
    index_of = {g.uuid: g.index for g in gpus}
    seen: set[str] = set()
    islands = []
    for gpu in gpus:
        if gpu.uuid in seen or not gpu.nvlink_peers:
            continue
        members = {gpu.uuid} | {p for p in gpu.nvlink_peers if p in index_of}
        seen |= members
        islands.append(sorted(index_of[m] for m in members))
    return islands


def run_gpus(args: argparse.Namespace) -> int:
    rows: list[tuple[Gpu, bool, Allocation | None]] = []
    holders: dict[str, Allocation] = {}
    if args.db is None and Path(default_ledger_path()).exists():
        args.db = default_ledger_path()
    if args.db:
        path = _sqlite_file(args.db)
        if path is not None and not path.exists():
            print(
                f"labgpu gpus: no ledger at {path}; pass the hub's --db URL (or set $LABGPU_LEDGER / $LABGPU_STATE_DIR)",
                file=sys.stderr,
            )
            return 1
        with Ledger(args.db) as ledger:
            holdings = ledger.holdings(include_gone=True)
        holders = {h.gpu.uuid: h.allocation for h in holdings if h.allocation}
        rows = [(h.gpu, h.present, h.allocation) for h in holdings]
    source = args.source or (None if args.db else "nvml")
    if source:
        try:
            gpus = inventory_source(source).gpus()
        except InventoryError as error:
            print(f"labgpu gpus: {error}", file=sys.stderr)
            return 1
        units = [unit for gpu in sorted(gpus, key=lambda g: g.index) for unit in (gpu, *mig_units(gpu))]
        rows = [(unit, True, holders.get(unit.uuid)) for unit in units]

    if args.json:
        print(
            json.dumps(
                [
                    {
                        **gpu_to_dict(gpu),
                        "present": present,
                        "held_by": None
                        if not a
                        else {
                            "user": a.user,
                            "server": a.server,
                            "since": a.since.isoformat(),
                            "image": a.image,
                            "gpus": list(a.gpu_uuids),
                        },
                    }
                    for gpu, present, a in rows
                ],
                indent=1,
            )
        )
        return 0
    if not rows:
        print("No GPUs." + ("" if source else " The ledger has no inventory yet; pass --source to read one."))
        return 0
    now = datetime.now(UTC)
    table = [["IDX", "UUID", "MODEL", "MEMORY", "HEALTH", "HELD BY", "SINCE"]]
    for gpu, present, allocation in rows:
        table.append(
            [
                gpu.label,
                gpu.short_uuid,
                gpu.model,
                _memory(gpu.memory_total),
                _health(gpu, present),
                allocation.server_label if allocation else "-",
                _since(allocation, now) if allocation else "",
            ]
        )
    widths = [max(len(row[col]) for row in table) for col in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())
    # What can be granted: whole GPUs and MIG slices (a GPU in MIG mode is its slices).
    units = [(gpu, a) for gpu, present, a in rows if present and not gpu.mig_enabled]
    free = sum(1 for gpu, a in units if gpu.healthy and not a)
    slices = sum(1 for gpu, _ in units if gpu.mig_parent)
    summary = f"{free} of {len(units)} GPUs free" + (f" (counting {slices} MIG slices)" if slices else "")
    islands = _islands([gpu for gpu, present, _ in rows if present])
    if islands:
        summary += "; NVLink islands: " + ", ".join("{" + ",".join(map(str, i)) + "}" for i in islands)
    print(summary)
    return 0
