"""`labgpu gpus`: list the GPUs (from the inventory source, or as the ledger recorded them) and,
with a ledger, which user/server holds each GPU and since when. Reads only."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from labgpu.cli.options import add_ledger_option, missing_ledger, no_ledger_message
from labgpu.cli.table import format_table
from labgpu.db.ledger import Ledger
from labgpu.gpus.allocator import Allocation, HeldUnits, allocatable_unit
from labgpu.gpus.inventory import Gpu, InventoryError, gpu_to_dict, inventory_source, mig_units
from labgpu.hub.resources import default_ledger_path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("gpus", help="list the GPUs and who holds each one", description=__doc__)
    add_ledger_option(parser)
    parser.add_argument(
        "--source",
        default=os.environ.get("LABGPU_GPU_SOURCE"),
        metavar="SPEC",
        help="where the inventory comes from: nvml, static:FILE or replay:FILE "
        "(default: $LABGPU_GPU_SOURCE; without it and --db: nvml)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run_gpus)


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
        missing = missing_ledger(args.db)
        if missing is not None:
            print(no_ledger_message("gpus", missing), file=sys.stderr)
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
        listed = [unit for gpu in sorted(gpus, key=lambda g: g.index) for unit in (gpu, *mig_units(gpu))]
        rows = [(unit, True, holders.get(unit.uuid)) for unit in listed]

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
    print(format_table(table))
    # What can be granted: whole GPUs and MIG slices (a GPU in MIG mode is its slices).
    units = [(gpu, a) for gpu, present, a in rows if present and allocatable_unit(gpu)]
    holds = HeldUnits.of(gpu for gpu, _, a in rows if a)
    free = sum(1 for gpu, _ in units if gpu.healthy and holds.free(gpu))
    slices = sum(1 for gpu, _ in units if gpu.mig_parent)
    summary = f"{free} of {len(units)} GPUs free" + (f" (counting {slices} MIG slices)" if slices else "")
    islands = _islands([gpu for gpu, present, _ in rows if present])
    if islands:
        summary += "; NVLink islands: " + ", ".join("{" + ",".join(map(str, i)) + "}" for i in islands)
    print(summary)
    return 0
