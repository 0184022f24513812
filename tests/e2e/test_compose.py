"""The one-command deployment for real: docker-compose.yml + docker-compose.demo.yml brought up
with docker-compose on this machine's engine (the hub image, its proxy, its managed services),
a user logs in over HTTP, spawns a workspace with a (simulated) GPU and runs a kernel; the hub
is upgraded (recreated by `up -d` with a changed setting) and the workspace stays reachable and
adopted; a backup taken while the hub runs is restored into a fresh stack (a new state volume)
with the allocation and the usage intact, behind the TLS front; `down` leaves the home volumes.

Each stack has its own compose project, hub id, ports and backup directory, and everything is
removed at the end (the shared workspace network stays, as for every other e2e test)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import docker
import pytest
import requests

from tests.conftest import docker_available, image_available, require
from tests.harness import NETWORK, REPO, WORKSPACE_IMAGE, HubClient, free_port, random_password, wait_until

pytestmark = pytest.mark.e2e

FILES = ["-f", str(REPO / "docker-compose.yml"), "-f", str(REPO / "docker-compose.demo.yml")]


def compose_command() -> list[str] | None:
    """docker-compose (1.29, Debian's) or the Compose v2 plugin."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


@pytest.fixture(scope="module")
def compose():
    command = compose_command()
    require(command is not None, "docker-compose", "apt-get install docker-compose (scripts/setup.sh)")
    assert command is not None
    return command


@pytest.fixture(scope="module")
def hub_image(compose):
    """labgpu/hub:<hash of its inputs>, built now if the code changed (cached: about a second)."""
    require(docker_available(), "the Docker engine", "start dockerd")
    require(image_available(WORKSPACE_IMAGE), f"the workspace image {WORKSPACE_IMAGE}", "run scripts/build-images.sh")
    built = subprocess.run(
        ["bash", str(REPO / "scripts/build-hub-image.sh")],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert built.returncode == 0, f"scripts/build-hub-image.sh failed:\n{built.stderr[-3000:]}"
    return built.stdout.strip().splitlines()[-1]


class Stack:
    """One compose project of the demo deployment; quacks like HubProcess for HubClient."""

    def __init__(self, compose: list[str], project: str, settings: dict[str, str]):
        self.compose, self.project, self.settings = compose, project, settings
        self.url = settings["LABGPU_BIND_URL"]
        self.password = settings["LABGPU_DEMO_PASSWORD"]

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.settings}
        command = [*self.compose, "--env-file", self.settings["ENV_FILE"], "-p", self.project, *FILES, *args]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result

    def hub_container(self):
        return docker.from_env().containers.get(self.run("ps", "-q", "hub").stdout.strip())

    def labgpu(self, *args: str) -> str:
        return self.run("exec", "-T", "hub", "labgpu", *args).stdout

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/hub/health", timeout=3).status_code == 200
        except requests.RequestException:
            return False

    def wait_healthy(self, timeout: float = 240) -> None:
        try:
            wait_until(self.healthy, timeout, f"the hub of {self.project}", interval=1)
        except TimeoutError:
            raise AssertionError(f"hub of {self.project} not up after {timeout}s:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 80) -> str:
        return self.run("logs", "--no-color", "--tail", str(lines), "hub", check=False).stdout


@pytest.fixture(scope="module")
def place(compose, hub_image):
    """What the stacks share: a hub id, the settings, and the cleanup of all they leave."""
    hub_id = "lgc" + uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix=f"labgpu-{hub_id}-"))
    (work / "backups").mkdir()
    (work / "config.d").mkdir()
    (work / "empty.env").write_text("")  # not the developer's .env beside docker-compose.yml
    settings = {
        "ENV_FILE": str(work / "empty.env"),
        "LABGPU_HUB_IMAGE": hub_image,
        "LABGPU_HUB_ID": hub_id,
        "LABGPU_BIND_URL": f"http://127.0.0.1:{free_port()}",
        "LABGPU_HUB_PORT": str(free_port("0.0.0.0")),
        "LABGPU_PROXY_API_PORT": str(free_port()),
        "LABGPU_WEB_PORT": str(free_port()),
        "LABGPU_TLS_HTTP_PORT": str(free_port("0.0.0.0")),
        "LABGPU_TLS_HTTPS_PORT": str(free_port("0.0.0.0")),
        "LABGPU_HOSTNAME": "localhost",
        "LABGPU_BACKUP_DIR": str(work / "backups"),
        "LABGPU_ADMIN_CONFIG_DIR": str(work / "config.d"),
        "LABGPU_IMAGE": WORKSPACE_IMAGE,
        "LABGPU_NETWORK": NETWORK,
        "LABGPU_DEMO_USERS": "demo",
        "LABGPU_DEMO_PASSWORD": random_password(),
        "LABGPU_DISK": "off",
    }
    settings["LABGPU_TLS_UPSTREAM"] = settings["LABGPU_BIND_URL"].removeprefix("http://")
    stacks: list[Stack] = []

    def stack(name: str) -> Stack:
        stacks.append(Stack(compose, f"{hub_id}{name}", settings))
        return stacks[-1]

    yield hub_id, work, stack
    for s in stacks:
        s.run("--profile", "tls", "down", "-v", "--timeout", "5", check=False)
    engine = docker.from_env()
    for container in engine.containers.list(all=True, filters={"label": f"org.labgpu.hub={hub_id}"}):
        container.remove(force=True)
    for volume in engine.volumes.list():
        if volume.name.startswith((f"{hub_id}-", f"{hub_id}a_", f"{hub_id}b_")):
            with contextlib.suppress(docker.errors.APIError):
                volume.remove(force=True)
    shutil.rmtree(work, ignore_errors=True)


def test_compose_files_validate(compose):
    for files in (["-f", str(REPO / "docker-compose.yml")], FILES):
        result = subprocess.run([*compose, *files, "config", "-q"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def held_gpus(stack: Stack) -> dict[str, tuple[str, str]]:
    """GPU uuid -> who holds it since when, from the ledger (`labgpu gpus` in the hub's container)."""
    gpus = json.loads(stack.labgpu("gpus", "--json"))
    return {g["uuid"]: (g["held_by"]["user"], g["held_by"]["since"]) for g in gpus if g["held_by"]}


def sessions(stack: Stack) -> list[tuple[str, str, str]]:
    """The workspace sessions the ledger recorded (`labgpu usage --sessions`): server, start, GPUs."""
    rows = csv.DictReader(io.StringIO(stack.labgpu("usage", "--sessions", "--csv")))
    return sorted((r["server"], r["started"], r["gpus"]) for r in rows)


def test_up_spawn_upgrade_backup_restore_down(place):
    hub_id, work, stack = place
    a = stack("a")
    a.run("up", "-d")
    a.wait_healthy()

    demo = HubClient(a, "demo").login()
    r = demo.start_server(options={"gpus": 1})
    assert r.status_code in (201, 202), r.text
    demo.wait_ready(timeout=240)
    assert demo.run_code("print(6 * 7)").strip() == "42"
    workspace = demo.server_model()["state"]["object_id"]
    gpus_before = held_gpus(a)
    assert [user for user, _ in gpus_before.values()] == ["demo"]

    # Upgrade: a changed setting (as a new image would) makes `up -d` recreate the hub alone.
    old_hub = a.hub_container().id
    a.settings["LABGPU_QUEUE_POLL_INTERVAL"] = "4s"
    a.run("up", "-d")
    assert a.hub_container().id != old_hub
    a.wait_healthy()
    demo = HubClient(a, "demo").login()
    assert demo.server_model()["ready"] and demo.server_model()["state"]["object_id"] == workspace
    assert demo.run_code("print(6 * 7)").strip() == "42"  # through the new hub's new proxy
    assert held_gpus(a) == gpus_before
    assert "demo still running" in a.log_tail(400)

    # A backup while the hub runs, then the hub goes away: homes and workspaces stay.
    a.labgpu("backup", "/srv/labgpu/backups/drill")
    usage = sessions(a)
    assert len(usage) == 1 and usage[0][0].startswith("demo")
    manifest = json.loads((work / "backups/drill/labgpu-backup.json").read_text())
    assert {f["role"] for f in manifest["files"]} == {"hub-db", "ledger", "state"}
    a.run("down", "--timeout", "10")
    engine = docker.from_env()
    assert engine.volumes.get(f"{hub_id}-home-demo")
    assert engine.containers.get(workspace).status == "running"

    # The restore drill: a fresh state volume, the backup put in before the hub's first start.
    b = stack("b")
    restored = b.run("run", "--rm", "--no-deps", "hub", "labgpu", "restore", "/srv/labgpu/backups/drill")
    assert "restored /srv/labgpu/backups/drill into /srv/labgpu/state" in restored.stdout
    b.run("--profile", "tls", "up", "-d")
    b.wait_healthy()
    demo = HubClient(b, "demo").login()
    assert demo.server_model()["state"]["object_id"] == workspace
    assert demo.run_code("print(6 * 7)").strip() == "42"
    assert held_gpus(b) == gpus_before
    assert sessions(b) == usage

    # The TLS front (Caddy, its own CA for localhost) serves the same hub over HTTPS.
    https = f"https://localhost:{b.settings['LABGPU_TLS_HTTPS_PORT']}/hub/login"
    wait_until(lambda: tls_answers(https), 60, "Caddy to serve HTTPS", interval=1)

    demo.stop_server(timeout=120)
    assert held_gpus(b) == {}
    b.run("--profile", "tls", "down", "--timeout", "10")
    assert engine.volumes.get(f"{hub_id}-home-demo")


def tls_answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5, verify=False).status_code == 200
    except requests.RequestException:
        return False
