"""Hub pages benchmark (issue 14): every page and JSON endpoint of the labgpu web service, served
by the real tornado application from a real ledger holding a lab's history: 64 GPUs, 500 users,
30 days of allocations, queue waits, reclaim notices and sessions (through the Ledger API), and
the poller's telemetry at its default retention (raw 5 s samples for 48 h, minute rollups for 30
days, hour rollups). Only the hub's OAuth is replaced (a header names the user).

    python benchmarks/pages.py [--quick]

Times each request from the client on localhost (so an upper bound of the server's time), the
median of repeats, the board's 2 s cache off. Baseline in the same run: `labgpu usage`'s own
computation (labgpu.db.usage, in process) for the same period. Writes
benchmarks/results/pages.json; last line `pages: worst_median_ms=... target=200 PASS|FAIL`.
--quick: 8 GPUs, 100 users, 7 days, raw samples for 6 h (under a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

from benchmarks.machine_info import machine_info
from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import QueueStore
from labgpu.db.usage import busy_hours_of, usage_rows
from labgpu.quota import PolicyStore
from labgpu.web import base
from labgpu.web.app import make_app
from labgpu.web.base import WebContext
from labgpu.web.data import Cached, Stores
from tests.harness import free_port
from tests.web_data import Lab, build_lab

TARGET_MS = 200.0
PREFIX = "/services/labgpu/"


def quotas(users: int) -> str:
    groups = {f"g{i}": [f"user{u:03d}" for u in range(users) if u % 10 == i] for i in range(10)}
    lines = ["defaults: {gpus: 4}", "groups:"]
    for name, members in groups.items():
        lines.append(f"  {name}: {{members: [{', '.join(members)}], managers: [{members[0]}], pool: 16}}")
    return "\n".join(lines) + "\n"


def serve(context: WebContext, port: int) -> IOLoop:
    def fake_user(self):
        who = self.request.headers.get("X-Test-User", "")
        name, _, admin = who.partition(",")
        return {"name": name, "admin": admin == "admin", "groups": []} if name else None

    base.BaseHandler.get_current_user = fake_user
    ready, box = threading.Event(), []

    def run() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        HTTPServer(make_app(context, modules=("labgpu.web.pages",))).listen(port, "127.0.0.1")
        box.append(IOLoop.current())
        ready.set()
        IOLoop.current().start()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)
    return box[0]


def measure(url: str, user: str, repeats: int) -> dict:
    times = []
    status = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = requests.get(url, headers={"X-Test-User": user}, timeout=60, allow_redirects=False)
        times.append((time.perf_counter() - t0) * 1000)
        status = r.status_code
    return {
        "status": status,
        "first_ms": round(times[0], 1),
        "median_ms": round(statistics.median(times), 1),
        "max_ms": round(max(times), 1),
        "bytes": len(r.content),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--keep", metavar="DIR", help="build the lab in DIR and keep it; reuse it when it is there")
    args = parser.parse_args()
    size = (
        {"preset": "8xH100-NVLink", "users": 100, "days": 7, "raw_hours": 6.0, "waiting": 8, "warned": 3}
        if args.quick
        else {"preset": "64xH100-NVLink", "users": 500, "days": 30, "raw_hours": 48.0, "waiting": 20, "warned": 5}
    )
    repeats = args.repeats or (5 if args.quick else 7)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="labgpu-pages-"))
    work.mkdir(parents=True, exist_ok=True)
    saved = work / "lab.json"
    t0 = time.perf_counter()
    if saved.exists() and json.loads(saved.read_text())["size"] == size:
        lab = Lab(work / "ledger.sqlite", datetime.fromisoformat(json.loads(saved.read_text())["now"]), [], [])
        lab.holders = json.loads(saved.read_text())["holders"]
    else:
        (work / "ledger.sqlite").unlink(missing_ok=True)
        lab = build_lab(work / "ledger.sqlite", **size)
        saved.write_text(json.dumps({"size": size, "now": lab.now.isoformat(), "holders": lab.holders}))
    build_s = time.perf_counter() - t0
    (work / "quotas.yaml").write_text(quotas(size["users"]))
    context = WebContext(ledger_url=str(lab.path), policy_store=PolicyStore([str(work / "quotas.yaml")]))
    context.extra["stores"] = Stores(context.ledger_url, lambda: context.policy)
    context.extra["board"] = Cached(0.0)  # measure the board's work, not its cache
    port = free_port()
    loop = serve(context, port)
    site = f"http://127.0.0.1:{port}{PREFIX}"
    user = next(iter(lab.holders.values()))
    manager = "user000"
    endpoints = {
        "page gpus": ("gpus", user),
        "api gpus": ("api/gpus", user),
        "api estimate": ("api/estimate", user),
        "page usage": ("usage", user),
        "api usage": ("api/usage", user),
        "csv usage": ("usage.csv?what=sessions", user),
        "page lab (admin)": ("lab", "boss,admin"),
        "api lab (admin)": ("api/lab", "boss,admin"),
        "csv lab (admin)": ("lab.csv?by=group", "boss,admin"),
        "page lab (group manager)": ("lab", manager),
    }
    results = {name: measure(site + path, who, repeats) for name, (path, who) in endpoints.items()}
    loop.add_callback(loop.stop)
    # Baseline: labgpu usage's own computation for the same period, in process.
    baseline = []
    with Ledger(lab.path, migrate=False) as ledger:
        store = QueueStore(ledger)
        for _ in range(repeats):
            t = time.perf_counter()
            until = store.now()
            since = until - timedelta(days=30)
            usage_rows(store, since, until, busy_hours=busy_hours_of(ledger.url, since, until))
            baseline.append((time.perf_counter() - t) * 1000)
        store.close()
    baseline_ms = statistics.median(baseline)
    bad = [n for n, r in results.items() if r["status"] != 200]
    worst = max(r["median_ms"] for r in results.values())
    passed = worst < TARGET_MS and not bad
    report = {
        "benchmark": "pages",
        "quick": args.quick,
        "size": size,
        "ledger_mb": round(lab.path.stat().st_size / 1e6, 1),
        "build_s": round(build_s, 1),
        "repeats": repeats,
        "target_ms": TARGET_MS,
        "endpoints": results,
        "baseline_labgpu_usage_30d_ms": round(baseline_ms, 1),
        "lab_api_vs_labgpu_usage": round(results["api lab (admin)"]["median_ms"] / baseline_ms, 2),
        "non_200": bad,
        "machine": machine_info(),
    }
    out = ROOT / "benchmarks" / "results" / ("pages-quick.json" if args.quick else "pages.json")
    out.write_text(json.dumps(report, indent=1) + "\n")
    for name, r in results.items():
        print(f"{name:28s} median {r['median_ms']:7.1f} ms  first {r['first_ms']:7.1f} ms  ({r['bytes']} bytes)")
    print(
        f"labgpu usage (30d, in process): {baseline_ms:.1f} ms; "
        f"ledger {report['ledger_mb']} MB; built in {build_s:.0f} s"
    )
    print(f"pages: worst_median_ms={worst:.1f} target={TARGET_MS:.0f} {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
