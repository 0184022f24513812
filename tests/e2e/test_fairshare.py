"""The GPU queue and idle reclamation against the real hub, Docker and SQLite ledger.

This machine has no GPU and no NVIDIA runtime: GPUs come from a recorded one-H100 inventory,
and a server that holds a GPU is stood in for by an allocation written to the real ledger
(a container with a GPU cannot start here). Everything else is real: the hub, its spawner,
the queue in the ledger, the progress stream, the reclaimer service and the Hub API stops.
"""

from __future__ import annotations

import json
import time

import pytest

from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import QueueStore
from labgpu.labels import LABEL_USER
from tests.harness import REPO, WORKSPACE_IMAGE, HubProcess, wait_until

pytestmark = pytest.mark.e2e

ONE_H100 = REPO / "tests" / "data" / "h100x1.json"


def quotas(extra: str = "") -> str:
    return f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}", display: "PyTorch workspace"}}
defaults: {{gpus: 1, gpus_total: 1, memory: 2G, cpus: 1, shm: 1G, images: [pytorch], idle_timeout: 1m}}
fairshare: {{allow_queue: true{extra}}}
"""


def progress_messages(client, until: str, timeout: float = 60) -> list[str]:
    """Read the spawn-progress event stream (what the spawn page shows) until ``until`` appears."""
    url = f"{client.hub.url}/hub/api/users/{client.user}/server/progress"
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    with client.session.get(url, headers={"X-XSRFToken": client.xsrf}, stream=True, timeout=timeout) as r:
        r.raise_for_status()
        for line in r.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                seen.append(json.loads(line[5:])["message"])
                if until in seen[-1]:
                    return seen
            if time.monotonic() > deadline:
                break
    raise AssertionError(f"never saw {until!r} in the progress stream: {seen}")


def test_spawn_waits_in_the_queue_with_progress_and_gets_the_gpu_when_it_is_released(real_parts):
    hub = HubProcess(
        users=["alice", "bob"],
        quotas=quotas(),
        extra_env={"LABGPU_GPU_SOURCE": f"replay:{ONE_H100}", "LABGPU_QUEUE_TIMEOUT": "120"},
    )
    try:
        hub.start()
        ledger = Ledger(hub.state_dir / "ledger.sqlite")
        store = QueueStore(ledger)
        # Alice's server holds the only GPU.
        (gpu,) = ledger.allocate("alice", "", 1).gpu_uuids

        bob = hub.client("bob")
        r = bob.start_server(options={"gpus": 1})
        assert r.status_code == 202, r.text  # pending: queued, not refused
        messages = progress_messages(bob, until="GPU queue")
        assert "You are #1 in the GPU queue" in messages[-1] and "alice" in messages[-1]
        (entry,) = store.waiting()
        assert (entry.user, entry.gpus) == ("bob", 1)

        # Bob gives up: the pending spawn is cancelled and leaves the queue.
        bob.stop_server()
        assert store.waiting() == []
        assert store.entry(entry.id).status == "cancelled"

        # He queues again; alice stops; within a dequeue pass bob is granted her GPU.
        assert bob.start_server(options={"gpus": 1}).status_code == 202
        wait_until(lambda: store.waiting(), 30, "bob's queue entry")
        ledger.release("alice", "", "stopped")
        granted = wait_until(
            lambda: [e for e in store.history() if e.user == "bob" and e.status == "granted"], 30, "the grant"
        )
        assert granted[-1].gpu_uuids == (gpu,)
        # Here the container then cannot start (no NVIDIA runtime): a clear error, GPU freed.
        wait_until(lambda: bob.server_model() is None, 60, "the failed start to end")
        events = [(e.action, e.reason) for e in ledger.audit() if e.user == "bob"]
        assert events[-2:] == [("grant", events[-2][1]), ("release", "failed start")]
        assert ledger.allocation_for("bob") is None
        assert hub.containers(**{LABEL_USER: "bob"}) == []
        store.close()
        ledger.close()
    finally:
        hub.cleanup()


def test_without_queueing_a_busy_gpu_is_a_clear_refusal(real_parts):
    hub = HubProcess(
        users=["bob"],
        quotas=quotas().replace("allow_queue: true", "allow_queue: false"),
        extra_env={"LABGPU_GPU_SOURCE": f"replay:{ONE_H100}"},
    )
    try:
        hub.start()
        ledger = Ledger(hub.state_dir / "ledger.sqlite")
        ledger.allocate("alice", "", 1)
        r = hub.client("bob").start_server(options={"gpus": 1})
        assert r.status_code == 503
        assert "Not enough free GPUs: you asked for 1, 0 are free" in r.json()["message"]
        assert "held by alice" in r.json()["message"]
        ledger.close()
    finally:
        hub.cleanup()


def test_idle_gpu_server_is_warned_then_reclaimed_a_busy_one_is_not(real_parts):
    from labgpu.db.telemetry_store import TelemetryDB
    from labgpu.gpus.telemetry import GpuReading

    eight = REPO / "tests" / "data" / "a100x8-two-nvlink-islands.json"
    hub = HubProcess(
        users=["carol", "dave"],
        quotas=quotas().replace("allow_queue: true", "allow_queue: true, reclaim_only_when_waiting: false"),
        extra_env={
            "LABGPU_GPU_SOURCE": f"replay:{eight}",
            "LABGPU_RECLAIM": "on",
            "LABGPU_RECLAIM_INTERVAL": "3s",
            "LABGPU_RECLAIM_WARN": "20s",
            "LABGPU_RECLAIM_WINDOW": "10s",
        },
    )
    try:
        hub.start()
        ledger_path = hub.state_dir / "ledger.sqlite"
        ledger = Ledger(ledger_path)
        telemetry = TelemetryDB(str(ledger_path))
        carol, dave = hub.client("carol"), hub.client("dave")
        for user in (carol, dave):
            assert user.start_server().status_code in (201, 202)
            user.wait_ready()
        # Stand-in for GPU servers (no GPU can reach a container here): each real server holds
        # one GPU in the real ledger; carol's sits idle, dave's is busy.
        (gpu,) = ledger.allocate("carol", "", 1).gpu_uuids
        (busy_gpu,) = ledger.allocate("dave", "", 1).gpu_uuids
        start = time.time()

        def idle_tick(ts: float) -> None:
            """One poller tick: carol's GPU at 0%, dave's at 97%."""
            readings = [
                (GpuReading(uuid=gpu, index=0, name="NVIDIA A100", utilization_gpu=0, memory_used_mib=0), 1.0, None),
                (
                    GpuReading(uuid=busy_gpu, index=1, name="NVIDIA A100", utilization_gpu=97, memory_used_mib=30000),
                    1.0,
                    None,
                ),
            ]
            telemetry.write_tick(ts, readings, [])

        warned = None
        deadline = start + 150
        while time.time() < deadline:
            idle_tick(time.time())
            page = carol.session.get(f"{hub.url}/hub/home", timeout=10).text
            if warned is None and "will be stopped at" in page:
                warned = time.time()
            if carol.server_model() is None:
                break
            time.sleep(1)
        assert warned is not None, "carol was never warned on the hub page"
        assert carol.server_model() is None, f"carol's idle GPU server was not reclaimed:\n{hub.log_tail(80)}"
        assert time.time() - start >= 60, "reclaimed before the 1m idle timeout"
        assert ledger.allocation_for("carol") is None
        assert hub.containers(**{LABEL_USER: "carol"}) == []
        assert "was stopped at" in carol.session.get(f"{hub.url}/hub/home", timeout=10).text
        # Dave's busy GPU server was never warned nor stopped, and still holds its GPU.
        assert dave.server_model() is not None
        assert "will be stopped" not in dave.session.get(f"{hub.url}/hub/home", timeout=10).text
        assert ledger.allocation_for("dave").gpu_uuids == (busy_gpu,)
        dave.stop_server()
        telemetry.close()
        ledger.close()
    finally:
        hub.cleanup()
