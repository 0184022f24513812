"""Limits hold on every path, with real spawns on simulated GPUs (issue 12, items 2 and 6).

The hub runs on simulated GPUs (``LABGPU_DEMO_GPUS``): every GPU server here is a real
workspace container started by the real hub and granted real ledger GPUs.

- A group's ``pool`` holds although GPUs are free: a second member's spawn waits in the queue
  (or is refused without queueing) until the first member stops.
- A server's GPUs are released only once its container is gone: when Docker's stop fails, the
  GPUs stay held (another user waits for them) until the hub's retry removes the container.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labgpu.db.ledger import Ledger
from labgpu.labels import LABEL_USER
from tests.harness import WORKSPACE_IMAGE, HubProcess, wait_until

pytestmark = pytest.mark.e2e


def quotas(allow_queue: bool, pool: str = "groups: {vision-lab: {members: [alice, bob], pool: 1}}") -> str:
    return f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}", display: "PyTorch workspace"}}
defaults: {{gpus: 1, gpus_total: 1, memory: 2G, cpus: 1, shm: 1G, images: [pytorch]}}
{pool}
fairshare: {{allow_queue: {str(allow_queue).lower()}}}
"""


def simulated_hub(quota_text: str, preset: str, **env: str) -> HubProcess:
    extra_env = {"LABGPU_DEMO_GPUS": preset, "LABGPU_QUEUE_TIMEOUT": "180", "LABGPU_QUEUE_POLL_INTERVAL": "2s", **env}
    return HubProcess(users=["alice", "bob"], quotas=quota_text, extra_env=extra_env)


def granted(hub: HubProcess, user: str) -> tuple[str, ...]:
    """The GPUs the user's real workspace was given (its LABGPU_GPUS)."""
    (container,) = hub.containers(**{LABEL_USER: user})
    env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
    return tuple(u for u in env["LABGPU_GPUS"].split(",") if u)


# --- item 2: a group's pool -------------------------------------------------------------------------


def test_a_full_group_pool_queues_the_second_member_although_a_gpu_is_free(real_parts):
    hub = simulated_hub(quotas(allow_queue=True), "2xH100")
    try:
        hub.start()
        alice, bob = hub.client("alice"), hub.client("bob")
        assert alice.start_server(options={"gpus": 1}).status_code in (201, 202)
        alice.wait_ready()
        ledger = Ledger(hub.state_dir / "ledger.sqlite")

        # One of the two GPUs is free, but vision-lab's pool of 1 is in use: bob waits.
        assert bob.start_server(options={"gpus": 1}).status_code == 202
        message = bob.progress("GPU queue")[-1]
        assert message.startswith("You are #1 in the GPU queue: waiting for 1 GPU (1 free, but your group")
        assert ledger.allocation_for("bob") is None and hub.containers(**{LABEL_USER: "bob"}) == []
        assert sum(1 for h in ledger.holdings() if h.allocation is None) == 1
        assert ledger.allocation_for("alice").group == "vision-lab"  # the ledger counts the pool

        # Alice stops: bob's real workspace starts, charged to the pool.
        alice.stop_server()
        bob.wait_ready(timeout=60)
        assert ledger.allocation_for("bob").group == "vision-lab"
        assert granted(hub, "bob") == ledger.allocation_for("bob").gpu_uuids
        bob.stop_server()
        ledger.close()
    finally:
        hub.cleanup()


def test_without_queueing_a_full_group_pool_is_refused_naming_who_holds_it(real_parts):
    hub = simulated_hub(quotas(allow_queue=False), "2xH100")
    try:
        hub.start()
        alice = hub.client("alice")
        assert alice.start_server(options={"gpus": 1}).status_code in (201, 202)
        alice.wait_ready()
        r = hub.client("bob").start_server(options={"gpus": 1})
        assert r.status_code == 503
        assert r.json()["message"] == (
            "You asked for 1 GPU, but vision-lab's pool of 1 GPU is in use: alice 1. "
            "Wait until a member of vision-lab stops a server."
        )
        assert hub.containers(**{LABEL_USER: "bob"}) == []
    finally:
        hub.cleanup()


# --- item 6: GPUs go back only once the container is gone ---------------------------------------------

# Loaded as the admin's own settings (LABGPU_CONFIG_DIR): Docker's stop and remove fail for this
# hub while the flag file exists, as when the engine cannot stop a container.
FAILING_DOCKER_STOP = """
from pathlib import Path

from docker.errors import APIError

from labgpu.hub.spawner import GPUDockerSpawner

FLAG = Path({flag!r})
real_docker_call = GPUDockerSpawner._docker


def docker_call(self, method, *args, **kwargs):
    if method in ("stop", "remove_container") and FLAG.exists():
        raise APIError("cannot stop container: permission denied (injected by the test)")
    return real_docker_call(self, method, *args, **kwargs)


GPUDockerSpawner._docker = docker_call
c.GPUDockerSpawner.gpu_release_retry_interval = 2.0
"""


def test_gpus_of_a_container_docker_could_not_stop_stay_held_until_it_is_gone(real_parts, tmp_path):
    flag = tmp_path / "docker-stop-fails"
    config_dir = tmp_path / "config.d"
    config_dir.mkdir()
    (config_dir / "50-failing-docker-stop.py").write_text(FAILING_DOCKER_STOP.format(flag=str(flag)))
    hub = simulated_hub(quotas(allow_queue=True, pool=""), "1xH100", LABGPU_CONFIG_DIR=str(config_dir))
    try:
        hub.start()
        alice, bob = hub.client("alice"), hub.client("bob")
        assert alice.start_server(options={"gpus": 1}).status_code in (201, 202)
        alice.wait_ready()
        ledger = Ledger(hub.state_dir / "ledger.sqlite")
        gpu = ledger.allocation_for("alice").gpu_uuids
        (container,) = hub.containers(**{LABEL_USER: "alice"})

        # Docker cannot stop alice's container: the hub forgets her server, but not her GPU.
        flag.touch()
        alice.api("DELETE", "/users/alice/server")
        wait_until(lambda: alice.server_model() is None, 60, "the hub to give up alice's server")
        container.reload()
        assert container.status == "running"
        assert ledger.allocation_for("alice").gpu_uuids == gpu
        log = Path(hub.log_path).read_text(errors="replace")
        assert f"GPUs of alice kept: container {container.id[:12]} could not be stopped (" in log
        assert "they are released when it is gone" in log

        # Bob cannot be granted the GPU alice's container still uses: he waits for it.
        assert bob.start_server(options={"gpus": 1}).status_code == 202
        assert "held by alice" in bob.progress("GPU queue")[-1]
        # Alice starting again is refused until her old container is gone.
        again = alice.start_server(options={"gpus": 1})
        assert again.status_code == 503
        assert again.json()["message"].startswith(f"Your previous server's container {container.id[:12]} could not")

        # Docker recovers: the hub's retry removes the container, then releases the GPU to bob.
        flag.unlink()
        bob.wait_ready(timeout=90)
        assert hub.containers(**{LABEL_USER: "alice"}) == []
        assert granted(hub, "bob") == gpu
        release = [e for e in ledger.audit() if e.action == "release" and e.user == "alice"][-1]
        assert release.reason == f"container {container.id[:12]} gone after a failed stop"
        bob.stop_server()
        ledger.close()
    finally:
        hub.cleanup()
