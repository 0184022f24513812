"""`labgpu reclaim`: every --interval, look at each allocation's GPU busy fraction (the poller's
telemetry) and apply the quota policy's idle_timeout / max_runtime / fairshare rules: warn the
owner (shown on the hub's pages), then stop the server through the Hub REST API. Busy GPUs, and
GPUs without telemetry, are never reclaimed.

Meant to run as a JupyterHub managed service, which passes JUPYTERHUB_API_URL and
JUPYTERHUB_API_TOKEN; docs/gpu-queue.md shows the hub configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from labgpu.cli.options import add_ledger_option, add_quotas_option, duration_seconds, ledger_url, quota_paths
from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import QueueStore
from labgpu.quota import Policy, PolicyError, PolicyStore
from labgpu.services.reclaimer import (
    ReclaimSettings,
    hub_server_stopper,
    hub_user_groups,
    no_hub_groups,
    run_forever,
    telemetry_busy_fraction,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "reclaim", help="warn about and reclaim idle GPUs (a JupyterHub managed service)", description=__doc__
    )
    add_ledger_option(parser)
    add_quotas_option(parser, "; 'none' for no policy (the fairshare defaults for everyone)")
    parser.add_argument(
        "--api-url",
        default=os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api"),
        help="the Hub API (default: $JUPYTERHUB_API_URL, set for managed services)",
    )
    parser.add_argument(
        "--interval", type=duration_seconds, default=60.0, metavar="DURATION", help="time between rounds (default 1m)"
    )
    parser.add_argument(
        "--warn-before",
        type=duration_seconds,
        default=900.0,
        metavar="DURATION",
        help="warn this long before stopping a server (default 15m)",
    )
    parser.add_argument(
        "--busy-window",
        type=duration_seconds,
        default=300.0,
        metavar="DURATION",
        help="busy fraction measured over this window each round (default 5m)",
    )
    parser.add_argument(
        "--idle-threshold",
        type=float,
        default=0.05,
        metavar="FRACTION",
        help="GPUs busy less than this fraction of the window are idle (default 0.05)",
    )
    parser.add_argument("--once", action="store_true", help="run one round and exit")
    parser.add_argument("--dry-run", action="store_true", help="log what would happen; warn and stop nobody")
    parser.set_defaults(func=run_reclaim)


def run_reclaim(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s labgpu-reclaim %(levelname)s %(message)s")
    token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not token and not args.dry_run:
        print(
            "labgpu reclaim: no Hub API token: run it as a JupyterHub managed service (it sets "
            "JUPYTERHUB_API_TOKEN) or set JUPYTERHUB_API_TOKEN, or use --dry-run",
            file=sys.stderr,
        )
        return 2
    paths = quota_paths(args)
    store_of_policy = None
    if paths != ["none"]:
        store_of_policy = PolicyStore(paths)
        try:
            store_of_policy.load()
        except PolicyError as e:
            print(f"labgpu reclaim: {e}", file=sys.stderr)
            return 1

    def policy() -> Policy | None:
        if store_of_policy is None:
            return None
        result = store_of_policy.refresh()
        if result.errors:
            logging.getLogger("labgpu.reclaim").error(
                "Quota files invalid, keeping the last good policy:\n  %s", "\n  ".join(result.errors)
            )
        return store_of_policy.policy

    ledger = Ledger(ledger_url(args))
    settings = ReclaimSettings(
        warn_before=args.warn_before, idle_threshold=args.idle_threshold, busy_window=args.busy_window
    )
    run_forever(
        ledger,
        QueueStore(ledger),
        policy,
        telemetry_busy_fraction(ledger.url),
        hub_server_stopper(args.api_url, token),
        settings,
        args.interval,
        dry_run=args.dry_run,
        once=args.once,
        groups_of=hub_user_groups(args.api_url, token) if token else no_hub_groups,
    )
    return 0
