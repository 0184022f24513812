"""Many processes allocating from one real ledger at once (SQLite and PostgreSQL): no GPU is ever
held twice."""

import multiprocessing
import random
import time
from collections import defaultdict
from pathlib import Path

import pytest

from labgpu.db.ledger import Ledger
from labgpu.gpus.allocator import NotEnoughGpus
from labgpu.gpus.inventory import ReplayInventory

DATA = Path(__file__).parent.parent / "data"
PROCESSES = 8
REQUESTS_PER_PROCESS = 25


def churn_worker(path: str, worker: int, start, answers) -> None:
    """25 spawn requests of 1-3 GPUs; hold each one briefly, at most two at a time."""
    rng = random.Random(worker)
    ledger = Ledger(path)
    start.wait()
    holding: list[str] = []
    for i in range(REQUESTS_PER_PROCESS):
        server = f"s{i}"
        n = rng.choice([1, 1, 2, 3])
        try:
            granted = ledger.allocate(f"user{worker}", server, n, placement=rng.choice(["pack", "spread"]))
            answers.put((worker, i, "granted", granted.gpu_uuids))
            holding.append(server)
        except NotEnoughGpus as refused:
            answers.put((worker, i, "refused", str(refused)))
        time.sleep(rng.random() * 0.002)
        if len(holding) == 2 or (holding and rng.random() < 0.5):
            ledger.release(f"user{worker}", holding.pop(0), "stopped")
    for server in holding:
        ledger.release(f"user{worker}", server, "stopped")
    ledger.close()


def grab_worker(path: str, worker: int, start, answers) -> None:
    """Three servers of two GPUs each, never released: far more than 8 GPUs are asked for."""
    ledger = Ledger(path)
    start.wait()
    for i in range(3):
        try:
            answers.put((worker, i, "granted", ledger.allocate(f"user{worker}", f"s{i}", 2).gpu_uuids))
        except NotEnoughGpus as refused:
            answers.put((worker, i, "refused", str(refused)))
    ledger.close()


def run_processes(path: str, target) -> list[tuple]:
    # Not "fork": a child forked from a test process whose other threads (an earlier test's
    # ledger checkpointer, an executor) held a lock at that instant waits on it forever (a CI run
    # saw one worker never exit). The fork server is a clean process, forked from for each worker.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["labgpu.db.ledger", "labgpu.gpus.allocator"])
    start, answers = context.Event(), context.Queue()
    processes = [context.Process(target=target, args=(str(path), w, start, answers)) for w in range(PROCESSES)]
    for process in processes:
        process.start()
    start.set()
    results = []
    deadline = time.monotonic() + 60
    expected = PROCESSES * (REQUESTS_PER_PROCESS if target is churn_worker else 3)
    while len(results) < expected and time.monotonic() < deadline:
        try:
            results.append(answers.get(timeout=max(0.1, deadline - time.monotonic())))
        except Exception:
            break
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0, f"worker {process.pid} exited with {process.exitcode}"
    return results


@pytest.fixture
def ledger_path(ledger_db):
    path = ledger_db
    with Ledger(path) as ledger:
        ledger.sync_inventory(ReplayInventory(DATA / "a100x8-two-nvlink-islands.json").gpus())
    return path


def test_200_concurrent_requests_for_8_gpus_every_one_answered_none_held_twice(ledger_path):
    answers = run_processes(ledger_path, churn_worker)
    assert len(answers) == PROCESSES * REQUESTS_PER_PROCESS == 200
    assert len({(w, i) for w, i, *_ in answers}) == 200
    granted = [a for a in answers if a[2] == "granted"]
    refused = [a for a in answers if a[2] == "refused"]
    assert granted and len(granted) + len(refused) == 200
    assert all(r[3].startswith("Not enough free GPUs: you asked for ") for r in refused)

    with Ledger(ledger_path) as ledger:
        events = ledger.audit()
        assert ledger.allocations() == []  # everything was released
    # Replay the audit in commit order: a GPU is granted only while nobody holds it.
    holder: dict[str, int] = {}
    grants_per_gpu: dict[str, int] = defaultdict(int)
    for event in events:
        for uuid in event.gpu_uuids:
            if event.action in ("grant", "adopt"):
                assert uuid not in holder, (
                    f"{uuid} granted to allocation {event.allocation_id} while {holder.get(uuid)} held it"
                )
                holder[uuid] = event.allocation_id
                grants_per_gpu[uuid] += 1
            else:
                assert holder.pop(uuid) == event.allocation_id
    assert not holder
    assert sum(1 for e in events if e.action == "grant") == len(granted)
    assert len(grants_per_gpu) == 8  # every GPU was used at some point


def test_overbooked_rush_grants_exactly_the_8_gpus_that_exist(ledger_path):
    answers = run_processes(ledger_path, grab_worker)
    assert len(answers) == PROCESSES * 3
    granted = [uuid for *_, outcome, uuids in answers if outcome == "granted" for uuid in uuids]
    assert len(granted) == len(set(granted)) == 8
    refusals = [a[3] for a in answers if a[2] == "refused"]
    assert len(refusals) == PROCESSES * 3 - 4
    assert all("you asked for 2, 0 are free" in r for r in refusals)
    with Ledger(ledger_path) as ledger:
        held = [h for h in ledger.holdings() if h.allocation]
        assert len(held) == 8
