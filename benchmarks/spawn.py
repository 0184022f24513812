"""Spawn-to-ready time of GPUDockerSpawner vs plain DockerSpawner on the same image, hub,
proxy and Docker engine, measured in one run with the two hubs interleaved.

    python benchmarks/spawn.py [--quick] [--runs N]

Both hubs give the workspace the same limits (4G memory, 2 CPUs, 2G /dev/shm: BENCH_QUOTAS
for ours, the same numbers in benchmarks/plain_dockerspawner_config.py for plain
DockerSpawner), so the ratio measures the spawners, not the limits. Each sample: POST
/hub/api/users/<u>/server until the hub reports the server ready (the hub has reached the
user's Jupyter server), as the spawn page would wait. Metric: the ratio
of the medians (ours / plain). Target: <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from machine_info import machine_info

from tests.harness import WORKSPACE_IMAGE, HubProcess

# The same limits for both spawners (the plain one gets them in plain_dockerspawner_config.py).
BENCH_QUOTAS = f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}", display: "PyTorch workspace"}}
defaults: {{gpus: 0, memory: 4G, cpus: 2, shm: 2G, images: [pytorch]}}
"""

TARGET = 1.05


def machine() -> dict:
    import docker

    return machine_info(docker_engine=docker.from_env().version().get("Version"))


def spawn_once(hub: HubProcess, user: str) -> float:
    client = hub.client(user)
    t0 = time.perf_counter()
    r = client.start_server()
    if r.status_code not in (201, 202):
        raise RuntimeError(f"spawn refused: {r.status_code} {r.text}")
    while True:
        model = client.server_model()
        if model and model.get("ready"):
            break
        if model is None:
            raise RuntimeError(f"spawn failed:\n{hub.log_tail()}")
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    client.stop_server()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 spawns each (under a minute)")
    parser.add_argument("--runs", type=int, default=None, help="spawns per spawner (default 15)")
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 15)

    hubs = {
        "GPUDockerSpawner": HubProcess(users=["bench"], quotas=BENCH_QUOTAS),
        "DockerSpawner": HubProcess(users=["bench"], config=REPO / "benchmarks" / "plain_dockerspawner_config.py"),
    }
    samples: dict[str, list[float]] = {name: [] for name in hubs}
    try:
        for hub in hubs.values():
            hub.start()
        # One warm-up spawn each (first container start of an image pays for page cache).
        for hub in hubs.values():
            spawn_once(hub, "bench")
        names = list(hubs)
        for i in range(runs):
            order = names if i % 2 == 0 else names[::-1]  # alternate who goes first
            for name in order:
                samples[name].append(spawn_once(hubs[name], "bench"))
                print(f"run {i + 1}/{runs} {name}: {samples[name][-1]:.3f} s", flush=True)
    finally:
        for hub in hubs.values():
            hub.cleanup()

    medians = {name: statistics.median(v) for name, v in samples.items()}
    ratio = medians["GPUDockerSpawner"] / medians["DockerSpawner"]
    # Each run's pair ran back to back: the median of the pairs' ratios is less noisy.
    paired = statistics.median(
        a / b for a, b in zip(samples["GPUDockerSpawner"], samples["DockerSpawner"], strict=False)
    )
    passed = ratio <= TARGET
    result = {
        "benchmark": "spawn",
        "metric": "median spawn-to-ready, GPUDockerSpawner / DockerSpawner",
        "ratio": round(ratio, 4),
        "target": TARGET,
        "pass": passed,
        "runs_each": runs,
        "image": WORKSPACE_IMAGE,
        "median_s": {k: round(v, 4) for k, v in medians.items()},
        "median_of_paired_ratios": round(paired, 4),
        "samples_s": {k: [round(x, 4) for x in v] for k, v in samples.items()},
        "limits_both": {"memory": "4G", "cpus": 2, "shm": "2G"},
        "machine": machine(),
        "load_average_after": os.getloadavg(),
        "quick": args.quick,
    }
    out = REPO / "benchmarks" / "results" / "spawn.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, m in medians.items():
        print(f"{name}: median {m:.3f} s over {runs}")
    print(f"median of paired ratios: {paired:.3f}")
    print(f"spawn: ratio={ratio:.3f} target={TARGET} {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
