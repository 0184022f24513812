"""The GPU queue, idle reclamation and limits with real spawns on simulated GPUs.

This machine has no GPU and no NVIDIA runtime, so the hub runs on simulated GPUs
(``LABGPU_DEMO_GPUS``, labgpu/gpus/simulated.py): every GPU server here is a real workspace
container started by the real hub, granted real ledger GPUs, with their UUIDs in its env and
labels and no device request. The poller reads a simulated GPU as busy while a process marked
``LABGPU_SIM_BUSY=1`` runs in the workspace holding it, found through the real /proc.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import QueueStore
from labgpu.gpus.simulated import simulated_gpus
from labgpu.labels import LABEL_GPUS, LABEL_USER
from tests.harness import WORKSPACE_IMAGE, HubProcess, wait_until

pytestmark = pytest.mark.e2e


def quotas(fairshare: str = "allow_queue: true", defaults: str = "gpus: 1, gpus_total: 1") -> str:
    return f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}", display: "PyTorch workspace"}}
defaults: {{{defaults}, memory: 2G, cpus: 1, shm: 1G, images: [pytorch], idle_timeout: 1m}}
fairshare: {{{fairshare}}}
"""


def simulated_hub(users, preset="1xH100", **kwargs) -> HubProcess:
    extra_env = {"LABGPU_DEMO_GPUS": preset, "LABGPU_QUEUE_TIMEOUT": "180", "LABGPU_QUEUE_POLL_INTERVAL": "2s"}
    extra_env.update(kwargs.pop("extra_env", {}))
    return HubProcess(users=users, extra_env=extra_env, **kwargs)


def workspace(hub: HubProcess, user: str):
    (container,) = hub.containers(**{LABEL_USER: user})
    container.reload()
    return container


def granted_env(container) -> dict[str, str]:
    return dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])


def test_second_user_queues_with_its_position_and_starts_when_the_first_stops(real_parts):
    hub = simulated_hub(["alice", "bob"], quotas=quotas())
    try:
        hub.start()
        (gpu,) = [g.uuid for g in simulated_gpus("1xH100")]
        alice, bob = hub.client("alice"), hub.client("bob")
        # What people see says the GPUs are simulated: the spawn page and every hub page.
        assert 'id="labgpu-simulated"' in alice.session.get(f"{hub.url}/hub/spawn", timeout=10).text
        assert "GPUs are simulated" in alice.session.get(f"{hub.url}/hub/home", timeout=10).text
        assert alice.start_server(options={"gpus": 1}).status_code in (201, 202)
        alice.wait_ready()
        # Alice's real workspace holds the simulated GPU: its UUID in env and labels, no device.
        container = workspace(hub, "alice")
        env = granted_env(container)
        assert env["LABGPU_GPUS"] == gpu == env["NVIDIA_VISIBLE_DEVICES"] and env["LABGPU_GPUS_SIMULATED"] == "1"
        assert container.labels[LABEL_GPUS] == gpu
        assert not container.attrs["HostConfig"].get("DeviceRequests")

        # Bob asks for the busy GPU: his spawn waits in the queue, and the spawn page says where.
        assert bob.start_server(options={"gpus": 1}).status_code == 202
        messages = bob.progress("GPU queue")
        assert any("simulated" in m for m in messages)
        assert "You are #1 in the GPU queue" in messages[-1] and "alice" in messages[-1]
        ledger = Ledger(hub.state_dir / "ledger.sqlite")
        store = QueueStore(ledger)
        (entry,) = store.waiting()
        assert (entry.user, entry.gpus) == ("bob", 1)

        # Alice stops; within a dequeue pass bob's real workspace starts with her GPU.
        stopped = time.monotonic()
        alice.stop_server()
        bob.wait_ready(timeout=60)
        assert time.monotonic() - stopped < 30
        assert granted_env(workspace(hub, "bob"))["LABGPU_GPUS"] == gpu
        # labgpu-doctor in bob's workspace says the GPU is simulated and checks the env against it.
        code, out = workspace(hub, "bob").exec_run(["labgpu-doctor", "--json", "--quick", "--skip-nccl"], user="1000")
        checks = {c["name"]: c for c in json.loads(out)["checks"]}
        assert code == 0 and checks["simulated"]["status"] == "PASS" and gpu in checks["simulated"]["detail"]
        assert checks["cuda"]["status"] == "SKIP" and "simulated" in checks["cuda"]["detail"]
        assert store.entry(entry.id).status == "granted"
        assert ledger.allocation_for("bob").gpu_uuids == (gpu,)
        # The audit never shows the GPU granted while held.
        holder = None
        for event in ledger.audit():
            if gpu in event.gpu_uuids:
                if event.action == "grant":
                    assert holder is None, f"{gpu} granted to {event.user} while {holder} held it"
                    holder = event.user
                elif event.action == "release":
                    holder = None
        bob.stop_server()
        store.close()
        ledger.close()
    finally:
        hub.cleanup()


def test_without_queueing_a_busy_gpu_is_a_clear_refusal_naming_the_holder(real_parts):
    hub = simulated_hub(["alice", "bob"], quotas=quotas(fairshare="allow_queue: false"))
    try:
        hub.start()
        alice = hub.client("alice")
        assert alice.start_server(options={"gpus": 1}).status_code in (201, 202)
        alice.wait_ready()
        r = hub.client("bob").start_server(options={"gpus": 1})
        assert r.status_code == 503
        assert "Not enough free GPUs: you asked for 1, 0 are free" in r.json()["message"]
        assert "held by alice" in r.json()["message"]
        assert hub.containers(**{LABEL_USER: "bob"}) == []
    finally:
        hub.cleanup()


def test_a_users_gpu_total_holds_across_their_real_servers(real_parts):
    hub = simulated_hub(
        ["alice"],
        preset="4xH100",
        quotas=quotas(defaults="gpus: 2, gpus_total: 3, named_servers: 2"),
    )
    try:
        hub.start()
        alice = hub.client("alice")
        assert alice.start_server("one", options={"gpus": 2}).status_code in (201, 202)
        alice.wait_ready("one")
        r = alice.start_server("two", options={"gpus": 2})
        assert r.status_code == 400
        assert "already hold 2 GPUs of your total of 3 GPUs" in r.json()["message"]
        assert alice.start_server("two", options={"gpus": 1}).status_code in (201, 202)
        alice.wait_ready("two")
        held = [set(granted_env(c)["LABGPU_GPUS"].split(",")) for c in hub.containers(**{LABEL_USER: "alice"})]
        assert sorted(len(h) for h in held) == [1, 2] and not set.intersection(*held)
    finally:
        hub.cleanup()


def test_idle_gpu_server_is_warned_then_reclaimed_a_busy_one_is_kept(real_parts):
    hub = simulated_hub(
        ["carol", "dave"],
        preset="2xH100",
        quotas=quotas(fairshare="allow_queue: true, reclaim_only_when_waiting: false"),
        extra_env={
            "LABGPU_POLLER_INTERVAL": "1",
            "LABGPU_RECLAIM_INTERVAL": "3s",
            "LABGPU_RECLAIM_WARN": "20s",
            "LABGPU_RECLAIM_WINDOW": "10s",
        },
    )
    try:
        hub.start()
        carol, dave = hub.client("carol"), hub.client("dave")
        start = time.time()  # carol's GPU is idle from its grant on
        for user in (carol, dave):
            assert user.start_server(options={"gpus": 1}).status_code in (201, 202)
            user.wait_ready()
        # Dave works: a process marked busy runs in his real workspace for the whole test.
        busy = workspace(hub, "dave").exec_run(
            ["sleep", "600"], environment={"LABGPU_SIM_BUSY": "1"}, user="1000", detach=True
        )
        assert busy.exit_code is None
        ledger = Ledger(hub.state_dir / "ledger.sqlite")
        dave_gpu = ledger.allocation_for("dave").gpu_uuids

        warned = None

        def carol_reclaimed() -> bool:
            nonlocal warned
            page = carol.session.get(f"{hub.url}/hub/home", timeout=10).text
            if warned is None and "will be stopped at" in page:
                warned = time.time()
            return carol.server_model() is None

        wait_until(carol_reclaimed, 150, "carol's idle GPU server to be reclaimed", interval=1)
        assert warned is not None, "carol was never warned on the hub page"
        assert time.time() - start >= 60, "reclaimed before the 1m idle timeout"
        assert ledger.allocation_for("carol") is None
        assert hub.containers(**{LABEL_USER: "carol"}) == []
        # The announcement bar shows what the hub read of the ledger a few seconds ago, at most.
        wait_until(
            lambda: "was stopped at" in carol.session.get(f"{hub.url}/hub/home", timeout=10).text,
            15,
            "carol's hub page to say her server was stopped",
            interval=1,
        )
        # Dave's busy GPU server was never warned nor stopped, and still holds its GPU; the
        # poller attributed the busy process to him through /proc.
        assert dave.server_model() is not None
        assert "will be stopped" not in dave.session.get(f"{hub.url}/hub/home", timeout=10).text
        assert ledger.allocation_for("dave").gpu_uuids == dave_gpu
        from labgpu.db.telemetry_store import TelemetryDB

        telemetry = TelemetryDB(str(hub.state_dir / "ledger.sqlite"), migrate=False)
        assert telemetry.busy_fraction(dave_gpu, time.time() - 30) > 0.9
        telemetry.close()
        ledger.close()
    finally:
        hub.cleanup()


def test_hub_killed_and_restarted_adopts_its_running_gpu_workspace(real_parts):
    hub = simulated_hub(["alice"], preset="2xH100", quotas=quotas())
    try:
        hub.start()
        alice = hub.client("alice")
        assert alice.start_server(options={"gpus": 1}).status_code in (201, 202)
        alice.wait_ready()
        running = workspace(hub, "alice")
        gpus = granted_env(running)["LABGPU_GPUS"]
        hub.stop(sig=signal.SIGKILL)
        hub.start()
        ledger = Ledger(hub.state_dir / "ledger.sqlite")
        assert ledger.allocation_for("alice").gpu_uuids == (gpus,)
        ledger.close()
        still = workspace(hub, "alice")
        assert still.id == running.id and still.status == "running"
        assert hub.client("alice").server_api("GET", "api/status").status_code == 200
    finally:
        hub.cleanup()
