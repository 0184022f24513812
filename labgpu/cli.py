"""`labgpu ...`: the command line. Thin: each subcommand lives in labgpu/commands/<name>.py,
which defines ``register(subparsers)`` adding its parser with ``func=...`` set."""

from __future__ import annotations

import argparse
import importlib
import sys

# One module per concern; each registers its own subcommand(s).
COMMAND_MODULES: tuple[str, ...] = ("quotas", "simulate", "poller", "gpus", "reclaim", "usage")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labgpu", description="LabGPU Hub administration")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"labgpu.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
