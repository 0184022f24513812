"""`labgpu simulate TRACE`: replay a JSON Lines demand trace (see labgpu/fairshare/trace.py
and benchmarks/traces/) through the real queue, backfill and reclamation code under fifo and/or
fairshare, and print waits, fairness, GPU busy fraction and reclaimed idle GPU-hours (an admin's
"what if")."""

from __future__ import annotations

import argparse
import json
import sys

from labgpu.fairshare.simulator import POLICIES, format_table, simulate
from labgpu.fairshare.trace import TraceError, load_trace


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate", help="replay a demand trace through the scheduler on a virtual clock", description=__doc__
    )
    parser.add_argument("trace", help="trace file, e.g. benchmarks/traces/deadline-week.jsonl")
    parser.add_argument(
        "--policy",
        choices=(*POLICIES, "both"),
        default="both",
        help="fifo (today's JupyterHub: first come, first served, nothing reclaimed), "
        "fairshare, or both side by side (default)",
    )
    parser.add_argument("--gpus", type=int, default=None, help="GPUs on the server (default: the trace's)")
    parser.add_argument("--json", action="store_true", help="print the full figures as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.gpus is not None and args.gpus < 1:
        print(f"labgpu simulate: --gpus must be at least 1 (got {args.gpus})", file=sys.stderr)
        return 2
    try:
        trace = load_trace(args.trace)
        policies = POLICIES if args.policy == "both" else (args.policy,)
        summaries = [simulate(trace, policy, gpus=args.gpus) for policy in policies]
    except TraceError as error:
        print(f"labgpu simulate: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"trace": args.trace, "results": summaries}, indent=2, sort_keys=True))
    else:
        print(
            f"{trace.name}: {len(trace.sessions)} sessions, {args.gpus or trace.gpus} GPUs, {trace.horizon / 3600:g} h"
        )
        print(format_table(summaries))
    return 0
