"""Time to load a quota policy of 1,000 users and 100 groups and resolve every user's limits,
and what the policy costs one spawn (issue 21 item 4).

    python benchmarks/quotas.py [--quick] [--runs N]

Each load sample, from the file's text: parse the YAML, validate it, merge it, and resolve the
limits of all 1,000 users with their groups (a fresh policy each time, so no cache carries
over). Also measured: how long the same file takes to report 10 errors (the slow path that
explains them with file:line:col). Target: median < 50 ms.

Per spawn, as the spawner does it on the spawn path (labgpu/hub/gpu_spawn.py) with the file on
disk: ``PolicyStore.refresh`` (a stat per file: unchanged), the user's groups, ``resolve`` and
``validate_user_options`` of the options a spawn form sends, for every one of the 1,000 users
in turn. Target: p99 < 1 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from machine_info import machine_info

from labgpu.quota import PolicyError, PolicyStore, load_policy_text, resolve, user_groups, validate_user_options

TARGET_MS = 50.0
SPAWN_TARGET_MS = 1.0
USERS = 1000
GROUPS = 100


def machine() -> dict:
    try:
        import yaml

        libyaml = bool(getattr(yaml, "__with_libyaml__", False))
    except ImportError:
        libyaml = False
    return machine_info(libyaml=libyaml)


def policy_text(users: int = USERS, groups: int = GROUPS, errors: int = 0) -> str:
    """A realistic lab file: a few images, 100 groups of 10 members, a block entry per user."""
    lines = [
        "images:",
        '  pytorch: {image: "labgpu/workspace:local", display: "PyTorch 2.x (CUDA 12)"}',
        '  tf: {image: "lab/tensorflow:2.17", display: "TensorFlow 2.17"}',
        '  jax: {image: "lab/jax:0.4", display: "JAX"}',
        "defaults: {gpus: 0, memory: 16G, cpus: 4, shm: 2G, images: [pytorch], idle_timeout: 2h, max_runtime: 7d}",
        "groups:",
    ]
    per_group = users // groups
    for g in range(groups):
        members = ", ".join(f"user{g * per_group + i:04d}" for i in range(per_group))
        lines.append(f"  lab{g:03d}:")
        lines.append(f"    members: [{members}]")
        lines.append(f"    gpus: {1 + g % 4}")
        lines.append(f"    pool: {4 + g % 8}")
        lines.append(f"    memory: {{limit: {32 + 16 * (g % 4)}G, guarantee: 8G}}")
        lines.append(f"    images: [pytorch, {'tf' if g % 2 else 'jax'}]")
        lines.append(f"    share: {1 + g % 3}")
        lines.append(f"    shared_volume: {'true' if g % 2 else 'false'}")
    lines.append("users:")
    for u in range(users):
        lines.append(f"  user{u:04d}:")
        lines.append(f"    gpus: {u % 5}")
        lines.append(f"    memory: {64 + (u % 4) * 32}G")
        lines.append(f"    idle_timeout: {1 + u % 8}h")
        if u < errors:
            lines.append("    gpus_total: -1")
    lines.append("fairshare: {half_life: 7d, reclaim_idle_after: 30m, reclaim_only_when_waiting: true}")
    return "\n".join(lines) + "\n"


def load_and_resolve(text: str, parts: dict[str, list[float]] | None = None) -> float:
    t0, c0 = time.perf_counter(), time.thread_time()
    policy = load_policy_text(text, "quotas.yaml")
    t1 = time.perf_counter()
    for u in range(USERS):
        resolve(policy, f"user{u:04d}", ())
    t2, c2 = time.perf_counter(), time.thread_time()
    if parts is not None:
        parts.setdefault("load", []).append((t1 - t0) * 1000)
        parts.setdefault("resolve_all_users", []).append((t2 - t1) * 1000)
        parts.setdefault("cpu", []).append((c2 - c0) * 1000)
    return (t2 - t0) * 1000


def libyaml_compose_ms(text: str, cpu: list[float] | None = None) -> float:
    """The floor: libyaml composing the file's node graph through PyYAML (yaml.CSafeLoader), the
    first step of every load, before anything of ours runs."""
    import yaml

    t0, c0 = time.perf_counter(), time.thread_time()
    yaml.compose(text, Loader=yaml.CSafeLoader)
    if cpu is not None:
        cpu.append((time.thread_time() - c0) * 1000)
    return (time.perf_counter() - t0) * 1000


def report_errors(text: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    try:
        load_policy_text(text, "quotas.yaml")
        count = 0
    except PolicyError as e:
        count = len(e.errors)
    return (time.perf_counter() - t0) * 1000, count


def spawn_path_ms(text: str, rounds: int) -> tuple[list[float], list[float]]:
    """Milliseconds per spawn for the policy's part of the spawn path, every user in turn:
    wall clock, and this thread's CPU time (what a busy shared machine does not inflate)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "quotas.yaml"
        path.write_text(text)
        store = PolicyStore([path])
        store.load()
        wall, cpu = [], []
        for _ in range(rounds):
            for u in range(USERS):
                user = f"user{u:04d}"
                t0, c0 = time.perf_counter(), time.thread_time()
                store.refresh()
                limits = resolve(store.policy, user, user_groups(store.policy, user, ()))
                options = {"gpus": min(1, limits.gpus), "memory": "8G", "cpus": 2, "image": limits.images[-1].name}
                validate_user_options(limits, options, gpus_in_use_by_user=0)
                cpu.append((time.thread_time() - c0) * 1000)
                wall.append((time.perf_counter() - t0) * 1000)
        return sorted(wall), sorted(cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 samples (a few seconds)")
    parser.add_argument("--runs", type=int, default=None, help="samples (default 200)")
    args = parser.parse_args()
    runs = args.runs or (30 if args.quick else 200)

    text = policy_text()
    bad = policy_text(errors=10)
    for _ in range(3):  # warm-up: imports, regex and pydantic caches
        load_and_resolve(text)
    parts: dict[str, list[float]] = {}
    compose: list[float] = []
    compose_cpu: list[float] = []
    samples = []
    for _ in range(runs):  # interleaved, so both see the same machine
        samples.append(load_and_resolve(text, parts))
        compose.append(libyaml_compose_ms(text, compose_cpu))
    samples.sort()
    error_samples = [report_errors(bad) for _ in range(max(5, runs // 10))]
    error_ms = sorted(ms for ms, _ in error_samples)
    median = statistics.median(samples)
    spawn_ms, spawn_cpu_ms = spawn_path_ms(text, 1 if args.quick else 5)

    def p99(values: list[float]) -> float:
        return values[min(len(values) - 1, len(values) * 99 // 100)]

    spawn_p99 = p99(spawn_cpu_ms)
    cpu_median = statistics.median(parts["cpu"])
    # The verdict is on this thread's CPU time: on a shared 2-core VM the wall clock also counts
    # the time other processes (and the hypervisor) take the core; the wall figures are kept.
    passed = cpu_median < TARGET_MS and spawn_p99 < SPAWN_TARGET_MS
    results = {
        "benchmark": "quotas",
        "what": f"load + validate + resolve all users of a policy of {USERS} users and {GROUPS} groups",
        "file_bytes": len(text.encode()),
        "file_lines": text.count("\n"),
        "runs": runs,
        "load_and_resolve_ms": {
            "median": round(median, 2),
            "p10": round(samples[len(samples) // 10], 2),
            "p90": round(samples[min(len(samples) - 1, len(samples) * 9 // 10)], 2),
            "min": round(samples[0], 2),
            "max": round(samples[-1], 2),
        },
        "load_and_resolve_cpu_ms": {
            "median": round(cpu_median, 2),
            "p10": round(sorted(parts["cpu"])[len(parts["cpu"]) // 10], 2),
            "p90": round(sorted(parts["cpu"])[len(parts["cpu"]) * 9 // 10], 2),
        },
        "where_the_time_goes_ms": {
            "libyaml_compose_alone_cpu_median": round(statistics.median(compose_cpu), 2),
            "libyaml_compose_alone_median": round(statistics.median(compose), 2),
            "load_median": round(statistics.median(parts["load"]), 2),
            "resolve_all_users_median": round(statistics.median(parts["resolve_all_users"]), 2),
            "ours_over_libyaml_median": round(median - statistics.median(compose), 2),
            "note": "load = libyaml's compose + our reading, validation and policy build; the compose alone is timed "
            "in the same run, interleaved",
        },
        "report_10_errors_ms": {
            "median": round(statistics.median(error_ms), 2),
            "errors_reported": error_samples[0][1],
        },
        "target_ms": TARGET_MS,
        "spawn_path_ms": {
            "what": "PolicyStore.refresh + user_groups + resolve + validate_user_options, per spawn",
            "spawns": len(spawn_ms),
            "wall": {
                "median": round(statistics.median(spawn_ms), 4),
                "p99": round(p99(spawn_ms), 4),
                "max": round(spawn_ms[-1], 4),
            },
            "cpu": {
                "median": round(statistics.median(spawn_cpu_ms), 4),
                "p99": round(spawn_p99, 4),
                "max": round(spawn_cpu_ms[-1], 4),
            },
            "target": f"CPU p99 < {SPAWN_TARGET_MS:g} ms (wall p99 shows the machine's contention)",
        },
        "pass": passed,
        "machine": machine(),
    }
    out = REPO / "benchmarks" / "results" / "quotas.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["load_and_resolve_ms"]), f"errors path: {results['report_10_errors_ms']}")
    print("CPU:", json.dumps(results["load_and_resolve_cpu_ms"]))
    print("where the time goes:", json.dumps(results["where_the_time_goes_ms"]))
    print("spawn path:", json.dumps(results["spawn_path_ms"]))
    print(
        f"quotas: load_resolve_1000_users_median_ms={median:.1f} cpu_median_ms={cpu_median:.1f} "
        f"target=<{TARGET_MS:.0f} "
        f"spawn_path_cpu_p99_ms={spawn_p99:.3f} target=<{SPAWN_TARGET_MS:g} {'PASS' if passed else 'FAIL'}"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
