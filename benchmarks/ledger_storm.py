"""The allocation storm, in full: 10,000 allocate/release requests from 8 processes (each a hub of
its own) on one ledger of 16 GPUs, on SQLite and on PostgreSQL; the audit is replayed to prove no
GPU was ever granted while held (0 double grants), and the replay must end where the ledger is.
The unit test (tests/unit/test_ledger_storm.py) runs the same storm with 1,600 requests.

Writes benchmarks/results/ledger_storm.json; exit status 1 if any double grant or broken release.

    python benchmarks/ledger_storm.py [--requests 10000] [--processes 8] [--backend sqlite|postgresql|both]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from machine_info import machine_info

from tests.ledger_storm import StormResult, run_storm
from tests.postgres import throwaway_cluster

RESULTS = REPO / "benchmarks" / "results"


def summary(result: StormResult) -> dict:
    return {
        "processes": result.processes,
        "requests": result.requests,
        "gpus": result.gpus,
        "granted": result.granted,
        "refused": result.refused,
        "released": result.released,
        "seconds": round(result.seconds, 2),
        "requests_per_second": round(result.requests_per_second, 1),
        "audit_events": result.replay.events,
        "double_grants": len(result.replay.double_grants),
        "bad_releases": len(result.replay.bad_releases),
        "replay_ends_where_the_ledger_is": result.held_at_end_match,
        "first_problems": (result.replay.double_grants + result.replay.bad_releases)[:5],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--gpus", type=int, default=16)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args(argv)
    report: dict = {"machine": machine_info(), "load_average_before": os.getloadavg(), "backends": {}}
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    for backend in backends:
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                result = run_storm(
                    str(Path(tmp) / "ledger.sqlite"), processes=args.processes, requests=args.requests, gpus=args.gpus
                )
        else:
            with throwaway_cluster(durable=True) as cluster:
                url = cluster.new_database()
                result = run_storm(url, processes=args.processes, requests=args.requests, gpus=args.gpus)
        report["backends"][backend] = summary(result)
        print(
            f"{backend}: {result.requests} requests from {result.processes} processes on {result.gpus} GPUs in "
            f"{result.seconds:.1f} s ({result.requests_per_second:.0f}/s): {result.granted} granted, "
            f"{result.refused} refused, {result.released} released; audit replay: "
            f"{len(result.replay.double_grants)} double grants, {len(result.replay.bad_releases)} bad releases, "
            f"ends where the ledger is: {result.held_at_end_match}"
        )
    report["load_average_after"] = os.getloadavg()
    ok = all(
        b["double_grants"] == 0 and b["bad_releases"] == 0 and b["replay_ends_where_the_ledger_is"]
        for b in report["backends"].values()
    )
    report["status"] = "PASS" if ok else "FAIL"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ledger_storm.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"ledger storm: {report['status']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
