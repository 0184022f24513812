"""`labgpu quotas check [FILE...]` and `labgpu quotas show USER`: validate the quota files and
explain what a user gets, without starting a hub."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from labgpu.cli.table import format_table
from labgpu.quota import (
    Limits,
    Policy,
    PolicyError,
    default_paths,
    load_policy,
    resolve,
)
from labgpu.units import format_duration, format_size

# Rows printed by `check` before it says how many more there are.
SUMMARY_ROWS = 40


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("quotas", help="check quota files, show a user's limits")
    commands = parser.add_subparsers(dest="quotas_command", metavar="ACTION")

    def show_help(args: argparse.Namespace) -> int:  # `labgpu quotas` without an action
        parser.print_help()
        return 2

    parser.set_defaults(func=show_help)

    check = commands.add_parser(
        "check",
        help="validate quota files; print every error, or a summary of the effective limits",
        description="Validate quota files (default: $LABGPU_QUOTAS or quotas/quotas.yaml). "
        "Exits 1 and prints every error as FILE:LINE:COL: message, or prints a summary and exits 0.",
    )
    check.add_argument("files", nargs="*", metavar="FILE", help="quota files or directories of *.yaml")
    check.set_defaults(func=run_check)

    show = commands.add_parser(
        "show",
        help="print a user's resolved limits and which entry each came from",
    )
    show.add_argument("user", help="JupyterHub user name")
    show.add_argument("--groups", default="", help="comma-separated groups the hub puts the user in (e.g. from OAuth)")
    show.add_argument("--file", action="append", default=[], metavar="F", help="quota file or directory (repeatable)")
    show.set_defaults(func=run_show)


def _load(files: Sequence[str]) -> Policy | None:
    try:
        return load_policy(list(files) or default_paths())
    except PolicyError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        count = len(e.errors)
        print(
            f"{count} error{'s' if count != 1 else ''}; the hub keeps its last good policy until they are fixed.",
            file=sys.stderr,
        )
        return None


def _row(who: str, limits: Limits) -> list[str]:
    images = ",".join(c.name for c in limits.images) or "-"
    return [
        who,
        str(limits.gpus),
        str(limits.gpus_total),
        format_size(limits.memory),
        f"{limits.cpus:g}",
        format_size(limits.shm),
        images,
        format_duration(limits.idle_timeout),
        format_duration(limits.max_runtime),
        f"{limits.share:g}",
    ]


def run_check(args: argparse.Namespace) -> int:
    policy = _load(args.files)
    if policy is None:
        return 1
    spec = policy.spec
    header = ["WHO", "GPUS", "TOTAL", "MEMORY", "CPUS", "SHM", "IMAGES", "IDLE", "RUNTIME", "SHARE"]
    rows = [header, _row("(defaults)", resolve(policy, "\0no-such-user", ()))]
    for name, group in spec.groups.items():
        pool = f" pool={group.pool}" if group.pool is not None else ""
        rows.append(
            _row(f"group {name} ({len(group.members)} listed{pool})", resolve(policy, "\0no-such-user", [name]))
        )
    users = list(dict.fromkeys(list(spec.users) + sorted(policy.member_groups)))
    shown = users[: max(0, SUMMARY_ROWS - len(rows))]
    for user in shown:
        rows.append(_row(user, resolve(policy, user, ())))
    print(
        f"OK: {', '.join(policy.files)}: {len(spec.images)} images, {len(spec.groups)} groups, {len(users)} users named"
    )
    print(format_table(rows))
    if len(users) > len(shown):
        print(f"... and {len(users) - len(shown)} more users (labgpu quotas show USER)")
    return 0


def run_show(args: argparse.Namespace) -> int:
    policy = _load(args.file)
    if policy is None:
        return 1
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    limits = resolve(policy, args.user, groups)
    unknown = [g for g in groups if g not in policy.spec.groups]
    print(f"user {args.user}: groups {', '.join(limits.groups) or '(none in the policy)'}")
    if unknown:
        print(f"  (groups without an entry in the policy, no effect: {', '.join(unknown)})")
    models = "any" if limits.models is None else ", ".join(limits.models) or "none"
    guarantee = format_size(limits.memory_guarantee) if limits.memory_guarantee is not None else "none"
    images = ", ".join(f"{c.name} ({c.image})" for c in limits.images) or "the spawner's configured image"
    fields = [
        ("gpus", f"{limits.gpus} per server"),
        ("gpus_total", f"{limits.gpus_total} across all servers"),
        ("models", models),
        ("memory", format_size(limits.memory)),
        ("memory_guarantee", guarantee),
        ("cpus", f"{limits.cpus:g}"),
        ("shm", format_size(limits.shm)),
        ("pids", str(limits.pids)),
        ("images", f"{images}; preselected: {limits.default_image or '-'}"),
        ("named_servers", str(limits.named_servers)),
        ("idle_timeout", format_duration(limits.idle_timeout)),
        ("max_runtime", format_duration(limits.max_runtime)),
        ("share", f"{limits.share:g}"),
    ]
    rows = [["FIELD", "VALUE", "FROM"]] + [[name, value, limits.sources.get(name, "")] for name, value in fields]
    for group, pool in limits.pools.items():
        rows.append(["pool", f"{pool} GPUs for the whole group", f"groups.{group}"])
    for group, volume in limits.shared_volumes.items():
        rows.append(["shared_volume", volume, f"groups.{group}"])
    print(format_table(rows))
    return 0
