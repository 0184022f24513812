"""fifo vs fairshare on the deadline-week trace (8 GPUs, 12 users, 3x the calm week's demand).

    python benchmarks/fairshare.py [--quick] [--seeds N]

Runs both policies through the real scheduler on a virtual clock (labgpu/fairshare/simulator.py).
Passes only if, on the committed deadline-week trace, fairshare beats fifo on Jain's index
and on the light users' p95 wait without lowering the GPU busy fraction. Also replays the
same scenario generated with other seeds (robustness, reported but not gating) and times
the simulator (median of repeated runs). Writes benchmarks/results/fairshare.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks" / "traces"))

from machine_info import machine_info
from make_traces import make_trace

from labgpu.fairshare.simulator import format_table, simulate
from labgpu.fairshare.trace import load_trace, parse_trace

TRACE = REPO / "benchmarks" / "traces" / "deadline-week.jsonl"
RESULTS = REPO / "benchmarks" / "results"
CRITERIA = (
    ("jain_index", "higher", "Jain's index (served / fair entitlement)"),
    ("light_p95_wait_h", "lower", "light users' p95 wait (h)"),
    ("gpu_busy_fraction", "not lower", "GPU busy fraction"),
)


def machine() -> dict:
    return machine_info()


def wins(fifo: dict, fair: dict) -> dict[str, bool]:
    return {
        "jain_index": fair["jain_index"] > fifo["jain_index"],
        "light_p95_wait_h": fair["light_p95_wait_h"] < fifo["light_p95_wait_h"],
        "gpu_busy_fraction": fair["gpu_busy_fraction"] >= fifo["gpu_busy_fraction"] - 1e-9,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds and timing runs (well under a minute)")
    parser.add_argument("--seeds", type=int, default=None, help="extra generated deadline weeks (default 20, quick 5)")
    parser.add_argument("--runs", type=int, default=None, help="timing runs per policy (default 7, quick 3)")
    args = parser.parse_args()
    seeds = args.seeds if args.seeds is not None else (5 if args.quick else 20)
    runs = args.runs or (3 if args.quick else 7)

    trace = load_trace(TRACE)
    summaries = {policy: simulate(trace, policy) for policy in ("fifo", "fairshare")}
    timings = {}
    for policy in ("fifo", "fairshare"):
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            simulate(trace, policy)
            samples.append(time.perf_counter() - started)
        timings[policy] = {"median_s": statistics.median(samples), "runs": runs}
    verdict = wins(summaries["fifo"], summaries["fairshare"])

    robustness = []
    for seed in range(1, seeds + 1):
        generated = parse_trace(make_trace("deadline-week", 2026 + seed, 3), f"deadline-week seed {2026 + seed}")
        fifo, fair = simulate(generated, "fifo"), simulate(generated, "fairshare")
        robustness.append(
            {
                "seed": 2026 + seed,
                "wins": wins(fifo, fair),
                **{f"fifo_{k}": fifo[k] for k, _, _ in CRITERIA},
                **{f"fairshare_{k}": fair[k] for k, _, _ in CRITERIA},
                "fifo_jain_index_held_per_share": fifo["jain_index_held_per_share"],
                "fairshare_jain_index_held_per_share": fair["jain_index_held_per_share"],
            }
        )
    all_three = sum(all(r["wins"].values()) for r in robustness)
    raw_jain_wins = sum(
        r["fairshare_jain_index_held_per_share"] > r["fifo_jain_index_held_per_share"] for r in robustness
    )

    table = format_table([summaries["fifo"], summaries["fairshare"]], markdown=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    won = sum(verdict.values())
    report = {
        "benchmark": "fairshare",
        "trace": str(TRACE.relative_to(REPO)),
        "machine": machine(),
        "results": summaries,
        "criteria": {k: {"better": how, "fairshare_wins": verdict[k]} for k, how, _ in CRITERIA},
        "criteria_won": won,
        "simulator_time": timings,
        "gpu_choice": "labgpu.gpus.allocator.choose_gpus",
        "robustness": {
            "seeds": seeds,
            "all_three_won": all_three,
            "raw_held_jain_won": raw_jain_wins,
            "runs": robustness,
        },
    }
    (RESULTS / "fairshare.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    lines = [
        f"# fifo vs fairshare on `{TRACE.relative_to(REPO)}`",
        "",
        f"8 GPUs, {len(trace.sessions)} sessions, 12 users in 3 groups, one week; "
        "made by `python benchmarks/fairshare.py`. Formulas: docs/fairshare.md.",
        "",
        table,
        "",
        "Gate (committed trace): "
        + ", ".join(f"{label}: {'fairshare better' if verdict[k] else 'NOT better'}" for k, _, label in CRITERIA)
        + ".",
        "",
        f"Robustness: the same scenario generated with {seeds} other seeds: fairshare wins all three "
        f"criteria in {all_three}/{seeds}; on the raw held-GPU-hours/share Jain's index it wins in "
        f"{raw_jain_wins}/{seeds}.",
        "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, Python "
        f"{report['machine']['python']}, {report['machine']['date']}. Simulator time per policy run: "
        f"fifo {timings['fifo']['median_s'] * 1000:.0f} ms, fairshare {timings['fairshare']['median_s'] * 1000:.0f} ms "
        f"(median of {runs}).",
    ]
    (RESULTS / "fairshare.md").write_text("\n".join(lines) + "\n")

    print(format_table([summaries["fifo"], summaries["fairshare"]]))
    print(
        f"robustness: fairshare won all three criteria on {all_three}/{seeds} other seeds "
        f"(raw held-GPU-h Jain: {raw_jain_wins}/{seeds})"
    )
    fifo, fair = summaries["fifo"], summaries["fairshare"]
    print(
        f"jain {fifo['jain_index']:.3f} -> {fair['jain_index']:.3f}; light p95 wait "
        f"{fifo['light_p95_wait_h']:.2f} h -> {fair['light_p95_wait_h']:.2f} h; busy fraction "
        f"{fifo['gpu_busy_fraction']:.3f} -> {fair['gpu_busy_fraction']:.3f}"
    )
    status = "PASS" if won == len(CRITERIA) else "FAIL"
    print(f"fairshare: criteria_won={won}/{len(CRITERIA)} target={len(CRITERIA)}/{len(CRITERIA)} {status}")
    return 0 if status == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
