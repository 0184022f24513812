"""An allocation storm: many processes allocating and releasing GPUs on one ledger at once, then
the audit replayed to prove that no GPU was ever granted while held. Shared by the storm test
(tests/unit/test_ledger_storm.py, a short storm) and benchmarks/ledger_storm.py (10,000 requests).

Each process is a hub of its own (its own Ledger, engine and connections, forked), with its own
users; every request is an allocate of 1, 2 or 4 GPUs for an idle server, or a release of one it
holds. Few GPUs for many requests, so most grants race with others and many are refused.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from dataclasses import dataclass

from labgpu.db.audit_replay import AuditReplay, replay_audit
from labgpu.db.ledger import Ledger
from labgpu.gpus.allocator import NotEnoughGpus
from labgpu.gpus.inventory import Gpu


def storm_gpus(count: int) -> list[Gpu]:
    """``count`` GPUs in NVLink islands of 4, two per PCIe switch, like an 8-GPU server."""
    uuids = [f"GPU-{i:08x}-0000-4000-8000-{i:012x}" for i in range(count)]
    return [
        Gpu(
            uuid=uuids[i],
            index=i,
            model="NVIDIA A100-SXM4-80GB",
            memory_total=80 * 1024**3,
            numa_node=(i // 4) % 2,
            switch_group=f"sw{i // 2}",
            nvlink_peers=frozenset(uuids[j] for j in range(i // 4 * 4, min(count, i // 4 * 4 + 4)) if j != i),
        )
        for i in range(count)
    ]


@dataclass
class StormResult:
    backend: str
    processes: int
    requests: int
    gpus: int
    granted: int
    refused: int
    released: int
    seconds: float
    replay: AuditReplay
    held_at_end_match: bool

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _worker(url: str, worker: int, requests: int, start, answers) -> None:
    rng = random.Random(worker)
    counts = {"granted": 0, "refused": 0, "released": 0}
    with Ledger(url) as ledger:
        users = [f"p{worker}-u{i}" for i in range(16)]
        holding: list[str] = []
        start.wait()
        for _ in range(requests):
            idle = [u for u in users if u not in holding]
            if holding and (not idle or rng.random() < 0.5):
                ledger.release(holding.pop(rng.randrange(len(holding))), "", "stopped")
                counts["released"] += 1
                continue
            user = rng.choice(idle)
            try:
                ledger.allocate(user, "", rng.choice([1, 1, 2, 4]), placement=rng.choice(["pack", "spread"]))
            except NotEnoughGpus:
                counts["refused"] += 1
                continue
            counts["granted"] += 1
            holding.append(user)
    answers.put(counts)


def run_storm(url: str, *, processes: int = 8, requests: int = 1600, gpus: int = 16) -> StormResult:
    """``requests`` requests in all, split over ``processes`` forked processes, on a fresh ledger
    of ``gpus`` GPUs at ``url``; then the audit replayed."""
    with Ledger(url) as ledger:
        ledger.sync_inventory(storm_gpus(gpus))
    context = multiprocessing.get_context("fork")
    start, answers = context.Event(), context.Queue()
    share = [requests // processes + (1 if w < requests % processes else 0) for w in range(processes)]
    workers = [context.Process(target=_worker, args=(url, w, share[w], start, answers)) for w in range(processes)]
    for process in workers:
        process.start()
    began = time.perf_counter()
    start.set()
    totals = {"granted": 0, "refused": 0, "released": 0}
    for _ in workers:
        for key, value in answers.get(timeout=600).items():
            totals[key] += value
    seconds = time.perf_counter() - began
    for process in workers:
        process.join(timeout=60)
        if process.exitcode != 0:
            raise RuntimeError(f"storm worker {process.pid} exited with {process.exitcode}")
    with Ledger(url) as ledger:
        replay = replay_audit(ledger.audit())
        held_now = {uuid for allocation in ledger.allocations() for uuid in allocation.gpu_uuids}
        backend = "postgresql" if ledger.postgresql else "sqlite"
    return StormResult(
        backend,
        processes,
        requests,
        gpus,
        totals["granted"],
        totals["refused"],
        totals["released"],
        seconds,
        replay,
        held_at_end_match=held_now == set(replay.held),
    )
