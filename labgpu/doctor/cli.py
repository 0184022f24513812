"""``labgpu-doctor [--json] [--quick] [--skip-nccl] [--workers N] [--nccl-timeout S]``: parse,
run the checks, print the report; exit 0 unless a check FAILs (2 for a bad option)."""

from __future__ import annotations

import argparse
import sys
import time

from labgpu.doctor.report import exit_code, render_json, render_text, run_checks


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labgpu-doctor",
        description="Check this workspace: driver vs CUDA, torch.cuda, assigned GPUs, autograd, "
        "matmul throughput, copy bandwidth, /dev/shm and NCCL. Exit 0 when nothing fails.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions and smaller NCCL messages (about half the time)"
    )
    parser.add_argument("--skip-nccl", action="store_true", help="skip the multi-GPU NCCL check")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="DataLoader workers to check /dev/shm for (default: usable CPUs, at most 8)",
    )
    parser.add_argument(
        "--nccl-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up on the NCCL check after this long (default 300)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """`labgpu-doctor [--json] [--quick] [--skip-nccl]`: run the checks, print, exit 0 unless one FAILs."""
    args = build_parser().parse_args(argv)
    if args.workers is not None and args.workers < 1:
        print("labgpu-doctor: --workers must be >= 1", file=sys.stderr)
        return 2
    started = time.perf_counter()
    results, found = run_checks(args.quick, args.skip_nccl, args.workers, args.nccl_timeout)
    if args.json:
        print(render_json(results, found, time.perf_counter() - started))
    else:
        print(render_text(results, found))
    return exit_code(results)
