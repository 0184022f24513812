"""`labgpu poller`: the GPU telemetry service (a JupyterHub managed service or a compose
service with host PID access). Thin: parse options, build the source, store and attributor,
then hand them to :class:`labgpu.services.poller.Poller`."""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import signal
import threading
import time

from labgpu.cli.options import add_ledger_option, ledger_url
from labgpu.gpus.sampling import (
    DEFAULT_INTERVAL_S,
    MIN_INTERVAL_S,
    NvmlTelemetrySource,
    ReplayTelemetrySource,
    TelemetrySource,
)
from labgpu.gpus.simulated import SimulatedTelemetrySource, simulated_gpus
from labgpu.gpus.telemetry import Retention
from labgpu.services.attribution import ProcessAttributor, container_id_from_cgroup, docker_label_lookup
from labgpu.services.poller import DEFAULT_ROLL_UP_EVERY_S, DEFAULT_WRITE_EVERY, Poller, open_with_backoff
from labgpu.units import gpus_text, parse_duration

log = logging.getLogger("labgpu.poller")

_SECONDS = re.compile(r"^\s*[0-9]+(?:\.[0-9]+)?\s*$")


def parse_retention(text: str) -> float | None:
    """'48h', '30d', '90m', '3600' (seconds) or 'forever' -> seconds (None = forever)."""
    if text.strip().lower() in ("forever", "never", "none"):
        return None
    try:  # labgpu.units: the quota files' grammar, plus a bare number of seconds
        seconds = parse_duration(float(text) if _SECONDS.match(text) else text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: use e.g. 48h, 30d, 90m, 3600 or 'forever'"
        ) from None
    return None if math.isinf(seconds) else seconds


def parse_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--interval {text!r} is not a number of seconds") from None
    if value < MIN_INTERVAL_S:
        raise argparse.ArgumentTypeError(
            f"--interval must be >= {MIN_INTERVAL_S:g} s (got {text}): NVML takes a driver lock"
        )
    return value


def positive_ticks(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--write-every {text!r} is not a whole number of ticks") from None
    if not 1 <= value <= 120:
        raise argparse.ArgumentTypeError(f"--write-every must be 1-120 ticks (got {text})")
    return value


def open_source(spec: str, hub_id: str = "labgpu", proc_root: str = "/proc") -> TelemetrySource:
    if spec == "nvml":
        return NvmlTelemetrySource()
    if spec.startswith("replay:"):
        return ReplayTelemetrySource(spec.removeprefix("replay:"))
    if spec.startswith("simulated:"):
        # Demo and tests only (the hub refuses simulated GPUs in production mode): GPUs are busy
        # while a process marked LABGPU_SIM_BUSY=1 runs in the workspace that holds them.
        from labgpu.services.simulated_load import MarkedProcessScanner

        gpus = simulated_gpus(spec.removeprefix("simulated:"))
        return SimulatedTelemetrySource(gpus, MarkedProcessScanner(docker_label_lookup(hub_id), proc_root))
    raise ValueError(
        f"--source {spec!r}: use 'nvml', 'replay:PATH' (a trace from tests/data/) or 'simulated:PRESET' (e.g. 4xH100)"
    )


def run_poller(args: argparse.Namespace) -> int:
    from labgpu.db.ledger import Ledger  # SQLAlchemy only when the command runs
    from labgpu.db.telemetry_store import TelemetryDB

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if args.source.startswith("replay:") or args.once:
        # A replay file or a one-off check: no point retrying, say what is wrong and stop.
        try:
            source: TelemetrySource | None = open_source(args.source, args.hub_id, args.proc_root)
        except Exception as error:
            log.error("Cannot read GPU telemetry from %s: %s", args.source, error)
            return 2
    else:
        source = open_with_backoff(lambda: open_source(args.source, args.hub_id, args.proc_root), stop)
    if source is None:
        return 0
    lookup = None if args.labels == "none" else docker_label_lookup(args.hub_id)
    id_from_cgroup = container_id_from_cgroup
    if args.labels == "kube":  # the DaemonSet of deploy/kubernetes: pods, not containers
        from labgpu.kube.attribution import pod_label_lookup, pod_uid_from_cgroup

        namespace, node = os.environ.get("LABGPU_KUBE_NAMESPACE", "default"), os.environ.get("LABGPU_KUBE_NODE")
        lookup, id_from_cgroup = pod_label_lookup(args.hub_id, namespace, node), pod_uid_from_cgroup
    db = ledger_url(args)
    ledger = Ledger(db)  # migrates the file to the newest schema (telemetry tables included)
    telemetry = TelemetryDB(db, migrate=False)
    poller = Poller(
        source,
        telemetry,
        ProcessAttributor(lookup, args.proc_root, id_from_cgroup=id_from_cgroup),
        interval_s=args.interval,
        retention=Retention(args.keep_raw, args.keep_minutes, args.keep_hours),
        on_health_change=ledger.set_gpu_health,  # a failing GPU is not allocated until it recovers
        write_every=args.write_every,
        roll_up_every_s=DEFAULT_ROLL_UP_EVERY_S,
    )
    log.info("GPU telemetry: %s every %g s into %s", args.source, args.interval, db)
    try:
        if args.once:
            report = poller.tick(time.time())
            poller.flush()
            print(
                f"{gpus_text(report.gpus)}, {report.processes} processes, "
                f"unhealthy: {', '.join(report.unhealthy) or 'none'}"
            )
        else:
            poller.run(stop)
    finally:
        source.close()
        telemetry.close()
        ledger.close()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "poller",
        help="record GPU telemetry (NVML) into the ledger",
        description="Sample every GPU and GPU process each tick, attribute processes to users "
        "through container labels, and keep raw samples plus minute and hour rollups.",
    )
    add_ledger_option(parser)
    parser.add_argument(
        "--hub-id",
        default=os.environ.get("LABGPU_HUB_ID", "labgpu"),
        help="attribute processes to users only in this hub's containers "
        "(label org.labgpu.hub; default: $LABGPU_HUB_ID or %(default)s)",
    )
    parser.add_argument(
        "--interval",
        type=parse_interval,
        default=DEFAULT_INTERVAL_S,
        help="seconds between ticks, >= 1 (default %(default)s)",
    )
    parser.add_argument(
        "--write-every",
        type=positive_ticks,
        default=DEFAULT_WRITE_EVERY,
        metavar="TICKS",
        help="ticks written to the database per transaction (default %(default)s: 30 s at the default "
        "interval; a health change is written at once; the pages and /metrics show samples up to that old)",
    )
    parser.add_argument(
        "--source",
        default="nvml",
        help="'nvml' (the GPUs of this host), 'replay:PATH' (a recorded trace) or 'simulated:PRESET' "
        "(simulated GPUs, demo and tests only: busy while a LABGPU_SIM_BUSY=1 process runs in the workspace)",
    )
    parser.add_argument("--once", action="store_true", help="take one tick, print a summary and exit")
    parser.add_argument(
        "--labels",
        choices=("docker", "kube", "none"),
        default="docker",
        help="where container labels come from: the Docker API, Kubernetes pods (the poller DaemonSet; "
        "$LABGPU_KUBE_NAMESPACE, $LABGPU_KUBE_NODE), or none (container ids only)",
    )
    parser.add_argument(
        "--proc-root",
        default=os.environ.get("LABGPU_PROC_ROOT", "/proc"),
        help="the host's /proc (the poller needs the host's PID namespace)",
    )
    retention = (("raw", "raw samples", 48 * 3600, "48h"), ("minutes", "minute rollups", 30 * 86400, "30d"))
    for option, what, seconds, shown in (*retention, ("hours", "hour rollups", None, "forever")):
        parser.add_argument(
            f"--keep-{option}",
            type=parse_retention,
            default=seconds,
            metavar="DURATION",
            help=f"keep {what} this long (default {shown})",
        )
    parser.set_defaults(func=run_poller)
