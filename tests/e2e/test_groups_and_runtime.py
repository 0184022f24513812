"""Who belongs where and how long a GPU server may run, on the real hub and Docker engine.

- A group whose members the quota file lists is the file's: removing alice from it removes her
  from the hub's group within the reload (GET /hub/api/groups), her next spawn gets the
  defaults and no shared folder, and a restarted hub agrees.
- ``max_runtime`` is a limit: a GPU server kept busy is warned on the hub page, then stopped
  when it reaches it; a CPU server of the same user is not limited (as the spawn page says).
  The reclaimer does it with a token that can stop servers and read groups, and no more.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import docker
import pytest
import requests

from labgpu.db.ledger import Ledger
from labgpu.db.telemetry_store import TelemetryDB
from labgpu.labels import LABEL_SERVER, LABEL_USER
from tests.harness import WORKSPACE_IMAGE, HubProcess, wait_until

pytestmark = pytest.mark.e2e

GiB = 1024**3


def group_quotas(members: str) -> str:
    return f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}", display: "PyTorch workspace"}}
defaults: {{gpus: 0, gpus_total: 0, memory: 2G, cpus: 1, shm: 1G, images: [pytorch]}}
groups:
  vision-lab: {{members: {members}, memory: 3G, cpus: 2, shared_volume: true}}
"""


def group_members(client, group: str) -> list[str]:
    r = client.api("GET", f"/groups/{group}")
    r.raise_for_status()
    return sorted(r.json()["users"])


def spawned(hub: HubProcess, client, name: str = ""):
    """Start ``client``'s server, wait for it, and return its container (inspected)."""
    assert client.start_server(name).status_code in (201, 202)
    client.wait_ready(name)
    (container,) = [c for c in hub.containers(**{LABEL_USER: client.user}) if c.labels.get(LABEL_SERVER, "") == name]
    container.reload()
    return container


def has_group_folder(container) -> bool:
    """Is vision-lab's shared folder mounted (wherever the hub mounts group folders)?"""
    return any(m["Destination"].endswith("/vision-lab") for m in container.attrs["Mounts"])


def test_removing_a_member_from_the_quota_file_revokes_the_group_now_and_after_a_restart(real_parts):
    hub = HubProcess(
        users=["alice", "bob"], quotas=group_quotas("[alice, bob]"), extra_env={"LABGPU_QUOTA_POLL_INTERVAL": "1s"}
    )
    try:
        hub.start()
        alice = hub.client("alice")  # the demo admin: she may read the groups
        assert group_members(alice, "vision-lab") == ["alice", "bob"]
        container = spawned(hub, alice)
        assert container.attrs["HostConfig"]["Memory"] == 3 * GiB  # the group's limit
        assert has_group_folder(container)  # and its shared folder
        alice.stop_server()

        # The admin removes alice from the group; the running hub notices within its reload.
        hub.quotas_file.write_text(group_quotas("[bob]"))
        edited = time.monotonic()
        wait_until(lambda: group_members(alice, "vision-lab") == ["bob"], 20, "alice to leave vision-lab in the hub")
        assert time.monotonic() - edited < 10
        assert alice.api("GET", "/users/alice").json()["groups"] == []
        container = spawned(hub, alice)
        assert container.attrs["HostConfig"]["Memory"] == 2 * GiB  # the defaults
        assert not has_group_folder(container)
        alice.stop_server()
        assert "Hub groups follow the quota files: group vision-lab: removed alice" in hub.log_tail(400)

        # Restarted (and bob removed while the hub was down): the hub's database agrees at once.
        hub.stop()
        hub.quotas_file.write_text(group_quotas("[]"))
        hub.start()
        alice = hub.client("alice")
        wait_until(lambda: group_members(alice, "vision-lab") == [], 10, "bob to leave vision-lab at hub start")
        container = spawned(hub, alice)
        assert container.attrs["HostConfig"]["Memory"] == 2 * GiB
        assert not has_group_folder(container)
        alice.stop_server()
        bob = hub.client("bob")
        container = spawned(hub, bob)
        assert container.attrs["HostConfig"]["Memory"] == 2 * GiB and not has_group_folder(container)
        bob.stop_server()
    finally:
        hub.cleanup()
        with contextlib.suppress(docker.errors.APIError):  # the group's volume, before it was named by hub id
            hub.docker.volumes.get("labgpu-group-vision-lab").remove()


RUNTIME_QUOTAS = f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}", display: "PyTorch workspace"}}
defaults:
  gpus: 1
  gpus_total: 1
  memory: 2G
  cpus: 1
  shm: 1G
  images: [pytorch]
  named_servers: 1
  max_runtime: 1m
fairshare: {{allow_queue: true}}
"""


def reclaimer_token(hub: HubProcess) -> str:
    """The reclaimer service's Hub API token, from its process's environment (the hub gave it)."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"reclaim" not in cmdline or str(hub.state_dir).encode() not in b" ".join(cmdline):
                continue
            environ = dict(item.split(b"=", 1) for item in (proc / "environ").read_bytes().split(b"\0") if b"=" in item)
        except OSError:
            continue
        if b"JUPYTERHUB_API_TOKEN" in environ:
            return environ[b"JUPYTERHUB_API_TOKEN"].decode()
    raise AssertionError("no reclaimer process of this hub found")


def test_max_runtime_stops_a_busy_gpu_server_after_a_warning_and_leaves_a_cpu_server(real_parts):
    hub = HubProcess(
        users=["alice"],
        quotas=RUNTIME_QUOTAS,
        extra_env={
            "LABGPU_DEMO_GPUS": "1xH100",
            "LABGPU_RECLAIM_INTERVAL": "3s",
            "LABGPU_RECLAIM_WARN": "20s",
            "LABGPU_POLLER_INTERVAL": "1",
        },
    )
    try:
        hub.start()
        alice = hub.client("alice")
        assert alice.start_server(options={"gpus": 1}).status_code in (201, 202)
        alice.wait_ready()
        (gpu_workspace,) = hub.containers(**{LABEL_USER: alice.user})
        # A kernel loop, as far as the GPU can tell: busy for the whole test.
        busy = gpu_workspace.exec_run(["sleep", "600"], environment={"LABGPU_SIM_BUSY": "1"}, user="1000", detach=True)
        assert busy.exit_code is None
        ledger = Ledger(hub.state_dir / "ledger.sqlite")
        granted = ledger.allocation_for("alice")
        since = granted.since.timestamp()
        cpu_workspace = spawned(hub, alice, "cpu")  # no GPUs: max_runtime does not apply

        warned = None

        def stopped() -> bool:
            nonlocal warned
            page = alice.session.get(f"{hub.url}/hub/home", timeout=10).text
            if warned is None and "will be stopped at" in page:
                warned = time.time()
                assert "unless its GPUs get busy" not in page  # busy or not
                assert "of its 1 min limit, busy or not" in page
            return alice.server_model() is None

        wait_until(stopped, 180, "alice's busy GPU server to be stopped at its max_runtime", interval=1)
        stopped_at = time.time()
        assert warned is not None, "alice was never warned on the hub page"
        assert warned - since >= 60 - 20 - 5  # the warning comes 20 s ahead
        assert 60 <= stopped_at - since < 60 + 20 + 30
        assert stopped_at - warned >= 15
        telemetry = TelemetryDB(str(hub.state_dir / "ledger.sqlite"), migrate=False)
        assert telemetry.busy_fraction(granted.gpu_uuids, stopped_at - 40, stopped_at - 5) > 0.9  # busy to the end
        telemetry.close()
        assert ledger.allocation_for("alice") is None
        # The announcement bar shows what the hub read of the ledger a few seconds ago, at most.
        wait_until(
            lambda: "its limit is 1 min" in alice.session.get(f"{hub.url}/hub/home", timeout=10).text,
            15,
            "alice's hub page to say her server was stopped at its limit",
            interval=1,
        )
        # The CPU server, started after, ran past a minute too, and is kept.
        assert time.time() - since > 60
        assert alice.server_model("cpu") is not None
        cpu_workspace.reload()
        assert cpu_workspace.status == "running"
        ledger.close()

        # The reclaimer's token: stop servers and read users' groups, nothing else.
        token = {"Authorization": f"token {reclaimer_token(hub)}"}
        scopes = set(requests.get(f"{hub.url}/hub/api/user", headers=token, timeout=10).json()["scopes"])
        assert {"servers", "read:users:groups"} <= scopes
        assert not scopes & {"read:users", "admin:users", "users", "admin:groups", "groups", "list:users"}
        alice_model = requests.get(f"{hub.url}/hub/api/users/alice", headers=token, timeout=10)
        assert alice_model.status_code == 200 and alice_model.json()["groups"] == []
        assert requests.get(f"{hub.url}/hub/api/users", headers=token, timeout=10).status_code == 403
    finally:
        hub.cleanup()
