"""`labgpu metrics`: print what the hub's /services/labgpu/metrics serves (Prometheus' text
format), read from the ledger's database here: to look at the figures without Prometheus, or to
check them with ``labgpu metrics | promtool check metrics``. Counters are read from the whole
history, as an exporter's first scrape does."""

from __future__ import annotations

import argparse
import sys

from labgpu.cli.options import (
    add_ledger_option,
    add_quotas_option,
    ledger_url,
    missing_ledger,
    no_ledger_message,
    quota_paths,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "metrics", help="print the hub's Prometheus metrics (GPUs, queue, usage, fair share)", description=__doc__
    )
    add_ledger_option(parser)
    add_quotas_option(parser, ", for groups and shares ('none': without a policy)")
    parser.add_argument("--hostname", default=None, help="the Hostname label of the GPU series (default: this host's)")
    parser.set_defaults(func=run_metrics)


def run_metrics(args: argparse.Namespace) -> int:
    from labgpu.metrics.collector import LedgerCollector, render
    from labgpu.quota import PolicyError, load_policy

    url = ledger_url(args)
    missing = missing_ledger(url)
    if missing is not None:
        print(no_ledger_message("metrics", missing), file=sys.stderr)
        return 1
    policy = None
    if args.quotas != "none":
        try:
            policy = load_policy(quota_paths(args))
        except PolicyError as e:
            print(f"labgpu metrics: the quota files are invalid: {e}", file=sys.stderr)
            return 1
    collector = LedgerCollector(url, policy=lambda: policy, hostname=args.hostname)
    try:
        sys.stdout.buffer.write(render(collector))
    finally:
        collector.close()
    return 0
