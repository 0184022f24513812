"""GPU allocation against the real hub, Docker engine and SQLite ledger (GPUs replayed from a
recorded 8x A100 inventory: this machine has no GPU and no NVIDIA runtime)."""

from __future__ import annotations

import signal

import docker
import pytest

from labgpu.db.ledger import Ledger
from labgpu.hub.containers import WorkspaceSpec, container_config
from labgpu.labels import LABEL_GPUS, LABEL_USER
from tests.harness import REPO, WORKSPACE_IMAGE, HubProcess

pytestmark = pytest.mark.e2e

INVENTORY = REPO / "tests" / "data" / "a100x8-two-nvlink-islands.json"
QUOTAS = f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}", display: "PyTorch workspace"}}
defaults: {{gpus: 0, gpus_total: 0, memory: 2G, cpus: 1, shm: 1G, images: [pytorch]}}
users:
  alice: {{gpus: 4, gpus_total: 4}}
"""


def gpu_hub(**kwargs) -> HubProcess:
    return HubProcess(
        users=["alice", "bob"],
        quotas=QUOTAS,
        extra_env={"LABGPU_GPU_SOURCE": f"replay:{INVENTORY}"},
        **kwargs,
    )


def test_device_request_carries_exactly_the_granted_gpus(real_parts, tmp_path):
    """The ledger grants GPUs; the container built for them asks Docker for exactly those,
    by UUID, never a count (created and inspected on the real engine; here it cannot start)."""
    from labgpu.gpus.inventory import ReplayInventory

    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.sync_inventory(ReplayInventory(INVENTORY).gpus())
    grant = ledger.allocate("alice", "", 2)
    assert len(set(grant.gpu_uuids)) == 2
    create, host = container_config(
        WorkspaceSpec(
            name=f"labgpu-devreq-{tmp_path.name[-8:]}",
            image=WORKSPACE_IMAGE,
            user="alice",
            server="",
            hub_id="devreq-test",
            environment={},
            gpu_uuids=grant.gpu_uuids,
        )
    )
    client = docker.from_env()
    api = client.api
    container = api.create_container(**create, host_config=api.create_host_config(**host))
    try:
        attrs = api.inspect_container(container["Id"])
        (request,) = attrs["HostConfig"]["DeviceRequests"]
        assert request["Driver"] == "nvidia"
        assert request["DeviceIDs"] == list(grant.gpu_uuids)
        assert request["Count"] == 0  # never "all GPUs"
        assert request["Capabilities"] == [["gpu"]]
        env = dict(e.split("=", 1) for e in attrs["Config"]["Env"])
        assert env["LABGPU_GPUS"] == ",".join(grant.gpu_uuids)
        assert attrs["Config"]["Labels"][LABEL_GPUS] == ",".join(grant.gpu_uuids)
    finally:
        api.remove_container(container["Id"], force=True)
        ledger.close()


def test_gpu_spawn_on_an_engine_without_gpu_runtime_fails_clearly_and_frees_the_gpus(real_parts):
    hub = gpu_hub()
    try:
        hub.start()
        alice = hub.client("alice")
        r = alice.start_server(options={"gpus": 2})
        assert r.status_code == 500, r.text
        message = r.json()["message"]
        assert "NVIDIA Container Toolkit" in message
        ledger = Ledger(hub.state_dir / "ledger.sqlite")
        try:
            assert ledger.allocation_for("alice") is None
            events = [e for e in ledger.audit() if e.user == "alice"]
            assert [e.action for e in events] == ["grant", "release"]
            assert len(events[0].gpu_uuids) == 2 and events[1].reason == "failed start"
        finally:
            ledger.close()
        assert hub.containers(**{LABEL_USER: "alice"}) == []
        # Over the user's quota is still a 400 naming the limit, before any GPU is touched.
        r = alice.start_server(options={"gpus": 5})
        assert r.status_code == 400 and "your limit is 4 GPUs per server" in r.json()["message"]
        # Bob has no GPUs in his quota.
        r = hub.client("bob").start_server(options={"gpus": 1})
        assert r.status_code == 400
    finally:
        hub.cleanup()


def test_hub_killed_and_restarted_ledger_and_docker_agree(real_parts):
    hub = gpu_hub()
    try:
        hub.start()
        alice = hub.client("alice")
        assert alice.start_server().status_code in (201, 202)
        alice.wait_ready()
        (running,) = hub.containers(**{LABEL_USER: "alice"})

        # The hub dies hard (and its proxy with it). Meanwhile a spawn it had granted GPUs to
        # never got its container: the ledger holds GPUs for a server that does not exist.
        hub.stop(sig=signal.SIGKILL)
        ledger = Ledger(hub.state_dir / "ledger.sqlite")
        stale = ledger.allocate("bob", "", 2)
        assert ledger.allocation_for("bob") is not None
        ledger.close()

        hub.start()
        ledger = Ledger(hub.state_dir / "ledger.sqlite")
        try:
            assert ledger.allocation_for("bob") is None, "GPUs of a server with no container were not released"
            released = [e for e in ledger.audit() if e.user == "bob" and e.action == "release"]
            assert released and set(released[-1].gpu_uuids) == set(stale.gpu_uuids)
            # Every GPU is free again for the next request.
            assert all(h.allocation is None for h in ledger.holdings())
        finally:
            ledger.close()
        # Alice's workspace survived the crash and is still hers, reachable through the new proxy.
        (still,) = hub.containers(**{LABEL_USER: "alice"})
        assert still.id == running.id and still.status == "running"
        alice = hub.client("alice")
        assert alice.server_api("GET", "api/status").status_code == 200
        alice.stop_server()
    finally:
        hub.cleanup()


def test_hub_killed_during_a_spawn_waiting_for_gpus_holds_nothing_after_restart(real_parts):
    from labgpu.db.queue_store import QueueStore

    one = REPO / "tests" / "data" / "h100x1.json"
    hub = HubProcess(
        users=["alice", "bob"],
        quotas=QUOTAS.replace("alice: {gpus: 4, gpus_total: 4}", "bob: {gpus: 1, gpus_total: 1}"),
        extra_env={"LABGPU_GPU_SOURCE": f"replay:{one}", "LABGPU_QUEUE_TIMEOUT": "300"},
    )
    try:
        hub.start()
        ledger = Ledger(hub.state_dir / "ledger.sqlite")
        store = QueueStore(ledger)
        ledger.allocate("alice", "", 1)  # alice's server holds the only GPU
        bob = hub.client("bob")
        assert bob.start_server(options={"gpus": 1}).status_code == 202
        (waiting,) = store.waiting()
        hub.stop(sig=signal.SIGKILL)  # the hub dies while bob's spawn waits

        hub.start()
        # Alice's allocation had no container: released at start. Bob holds nothing, has no
        # container, and his spawn is not running: the ledger and Docker agree.
        assert ledger.allocation_for("alice") is None and ledger.allocation_for("bob") is None
        assert hub.containers() == []
        assert hub.client("bob").server_model() is None
        # When bob asks again he keeps his place (his original submission time) and, the GPU
        # being free now, is granted it (the container then cannot start on this machine).
        bob = hub.client("bob")
        bob.start_server(options={"gpus": 1})
        grants = [e for e in ledger.audit() if e.user == "bob" and e.action == "grant"]
        assert len(grants) == 1
        entry = store.entry(waiting.id)
        assert entry.status == "granted" and entry.submitted_at == waiting.submitted_at
        assert [e.id for e in store.history()] == [waiting.id]  # the same entry, not a new one
        store.close()
        ledger.close()
    finally:
        hub.cleanup()
