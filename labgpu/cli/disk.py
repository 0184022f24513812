"""`labgpu disk`: how much each home and group shared folder of the hub holds, as last measured.

With --measure, measure them first (Docker's own accounting, `docker system df -v`) and record
the sizes in the ledger's database, where the hub reads them at every spawn: a spawn over the
quota file's `disk` (a home) or `shared_disk` (a group's folder) is refused, and the spawn page
shows the figures. With --measure --interval it keeps measuring: the hub runs it so, as its
managed service `labgpu-disk`, and its warnings about volumes over quota appear in the hub's log.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from labgpu.cli.options import (
    add_ledger_option,
    add_quotas_option,
    duration_seconds,
    ledger_url,
    missing_ledger,
    no_ledger_message,
    quota_paths,
)
from labgpu.cli.table import format_table

if TYPE_CHECKING:
    from labgpu.db.disk_store import VolumeSizeStore


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "disk", help="the disk use of homes and group folders (and the service measuring it)", description=__doc__
    )
    add_ledger_option(parser)
    add_quotas_option(parser, "; 'none' for no policy (measure, warn about nothing)")
    parser.add_argument(
        "--hub-id",
        default=os.environ.get("LABGPU_HUB_ID", "labgpu"),
        help="the hub whose volumes to measure (default: $LABGPU_HUB_ID, else labgpu)",
    )
    parser.add_argument("--measure", action="store_true", help="measure the volumes first and record their sizes")
    parser.add_argument(
        "--interval",
        type=duration_seconds,
        default=None,
        metavar="DURATION",
        help="with --measure: measure again every DURATION, forever (the managed service; e.g. 10m)",
    )
    parser.set_defaults(func=run_disk)


def run_disk(args: argparse.Namespace) -> int:
    from labgpu.db.disk_store import VolumeSizeStore
    from labgpu.units import format_size

    url = ledger_url(args)
    if args.measure:
        measure(args, VolumeSizeStore(url))
        if args.interval is not None:
            return 0  # not reached: the loop runs until the service is stopped
    else:
        missing = missing_ledger(url)
        if missing is not None:
            print(no_ledger_message("disk", missing), file=sys.stderr)
            return 1
    sizes = VolumeSizeStore(url).sizes()
    if not sizes:
        print("No volume sizes recorded yet (the hub's labgpu-disk service records them; or run --measure).")
        return 0
    rows = [["VOLUME", "SIZE", "MEASURED (UTC)"]]
    rows += [[v.volume, format_size(v.size), f"{v.measured_at:%Y-%m-%d %H:%M}"] for v in sizes.values()]
    print(format_table(rows, right_aligned={1}))
    return 0


def measure(args: argparse.Namespace, store: VolumeSizeStore) -> None:
    import docker

    from labgpu.quota import Policy, PolicyError, PolicyStore
    from labgpu.services import disk_usage
    from labgpu.services.reclaimer import hub_user_groups, no_hub_groups

    logging.basicConfig(level=logging.INFO, format="%(asctime)s labgpu-disk %(levelname)s %(message)s")
    paths = quota_paths(args)
    policy_store = None
    if paths != ["none"]:
        policy_store = PolicyStore(paths)
        try:
            policy_store.load()
        except PolicyError as e:
            logging.getLogger("labgpu.disk").error("%s; measuring without warnings", e)
            policy_store = None

    def policy() -> Policy | None:
        if policy_store is None:
            return None
        policy_store.refresh()  # a bad edit keeps the last good policy (the hub says why)
        return policy_store.policy

    token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    api_url = os.environ.get("JUPYTERHUB_API_URL", "")
    disk_usage.run_forever(
        store,
        docker.from_env(),
        args.hub_id,
        policy,
        args.interval or 0.0,
        groups_of=hub_user_groups(api_url, token) if token and api_url else no_hub_groups,
        once=args.interval is None,
    )
