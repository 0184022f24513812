"""`labgpu ...`: the command line. Thin: each subcommand lives in labgpu/cli/<name>.py,
which defines ``register(subparsers)`` adding its parser with ``func=...`` set."""

from __future__ import annotations

import argparse
import importlib
import sys

# One module per concern; each registers its own subcommand(s).
COMMAND_MODULES: tuple[str, ...] = (
    "quotas",
    "simulate",
    "poller",
    "gpus",
    "reclaim",
    "usage",
    "disk",
    "web",
    "backup",
    "ssh",
    "migrate_ledger",
    "metrics",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labgpu", description="LabGPU Hub administration")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"labgpu.cli.{name}")
        except ImportError as e:
            # One subcommand's missing dependency (say, on a GPU box with a bare Python) must not
            # take the others down: that subcommand says what is missing instead.
            _unavailable(subparsers, name, e)
            continue
        module.register(subparsers)
    return parser


def _unavailable(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, error: ImportError
) -> None:
    missing = error.name or str(error)

    def explain(args: argparse.Namespace) -> int:
        print(
            f"labgpu {name}: needs the Python package {missing!r}, which is not installed here "
            f"(pip install 'labgpu' installs it)",
            file=sys.stderr,
        )
        return 1

    parser = subparsers.add_parser(name, help=f"(unavailable: {missing} is not installed)", add_help=False)
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    parser.set_defaults(func=explain, unavailable=True)  # whatever options follow, it explains


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "unavailable", False):
        parser.parse_args(argv)  # argparse's own error for what it does not know
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)
