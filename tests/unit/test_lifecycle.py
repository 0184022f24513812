"""A server's GPUs go back to the ledger only once Docker confirms its container is gone
(issue 12 item 6): a failed Docker stop keeps them held and says so in the log, and a later
poll, the hub's retry or the next start releases them once the container is found gone.

Spawners are made as in test_spawner.py (an in-memory hub database, ``User.get_spawner``);
Docker is a small engine in memory whose stop can be made to fail.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import requests
from docker.errors import APIError, NotFound
from jupyterhub import orm
from jupyterhub.objects import Hub
from jupyterhub.spawner import SpawnException
from jupyterhub.user import User
from traitlets.config import Config

from labgpu.gpus.allocator import NotEnoughGpus
from labgpu.hub import resources as hub_resources
from labgpu.hub.lifecycle import GpuLifecycleSpawner
from labgpu.hub.spawner import GPUDockerSpawner

DATA = Path(__file__).parent.parent / "data"


def docker_error(status: int, explanation: str) -> APIError:
    response = requests.Response()
    response.status_code = status
    cls = NotFound if status == 404 else APIError
    return cls(f"{status} Server Error", response=response, explanation=explanation)


class Engine:
    """Containers by id and name, with their state; ``stuck`` containers refuse stop and remove."""

    def __init__(self):
        self.containers: dict[str, dict] = {}
        self.stuck: set[str] = set()
        self.down = False  # the engine answers 500 to everything
        self.calls: list[tuple[str, tuple]] = []

    def run(self, cid: str, name: str) -> None:
        self.containers[cid] = {"Id": cid, "Name": name, "State": {"Status": "running", "Running": True}}

    def find(self, ref: str) -> dict:
        for c in self.containers.values():
            if ref in (c["Id"], c["Name"]):
                return c
        raise docker_error(404, f"No such container: {ref}")

    async def __call__(self, method, *args, **kwargs):
        self.calls.append((method, args))
        if self.down:
            raise docker_error(500, "Cannot connect to the containerd socket")
        if method == "inspect_container":
            return self.find(args[0])
        if method in ("stop", "remove_container"):
            container = self.find(args[0])
            if container["Id"] in self.stuck:
                raise docker_error(500, "cannot stop container: permission denied")
            if method == "stop":
                container["State"] = {
                    "Status": "exited",
                    "Running": False,
                    "ExitCode": 0,
                    "Error": "",
                    "FinishedAt": "",
                }
            else:
                del self.containers[container["Id"]]
            return None
        raise AssertionError(f"unexpected Docker call {method}")


@pytest.fixture
def engine():
    yield Engine()
    for kept in list(GpuLifecycleSpawner.kept_gpus.values()):
        if kept.watch is not None:
            kept.watch.cancel()
    GpuLifecycleSpawner.kept_gpus.clear()


@pytest.fixture
def running(ledger_url, engine):
    """``running(**traits)``: alice's default server, holding 2 GPUs, its container c1 running."""
    hub_db = orm.new_session_factory("sqlite:///:memory:")()

    def make(**traits):
        orm_user = orm.User(name="alice")
        hub_db.add(orm_user)
        hub_db.add(orm.Spawner(name="", user=orm_user))
        hub_db.commit()
        config = Config()
        for trait, value in {"hub_id": "lab-a", "ledger_url": ledger_url, **traits}.items():
            setattr(config.GPUDockerSpawner, trait, value)
        user = User(orm_user, {"spawner_class": GPUDockerSpawner, "config": config, "hub": Hub()})
        spawner = user.get_spawner("")
        spawner.docker = engine
        spawner.object_id, spawner.object_name = "c1", spawner.container_name
        engine.run("c1", spawner.container_name)
        spawner.gpu_uuids = hub_resources.ledger(ledger_url).allocate("alice", "", 2).gpu_uuids
        return spawner

    return make


def held(ledger_url):
    allocation = hub_resources.ledger(ledger_url).allocation_for("alice")
    return allocation.gpu_uuids if allocation else ()


async def test_a_failed_docker_stop_keeps_the_gpus_and_a_later_poll_finding_no_container_releases_them(
    running, engine, ledger_url, caplog
):
    spawner = running()
    gpus = held(ledger_url)
    engine.stuck.add("c1")
    with caplog.at_level(logging.INFO), pytest.raises(APIError, match="permission denied"):
        await spawner.stop()
    assert held(ledger_url) == gpus  # the container may still use them: nobody else may get them
    assert (
        f"GPUs of alice kept: container c1 could not be stopped (cannot stop container: permission denied); "
        f"they are released when it is gone ({', '.join(gpus)})"
    ) in caplog.text
    with pytest.raises(NotEnoughGpus):  # another user cannot be granted them
        hub_resources.ledger(ledger_url).allocate("bob", "", 7)

    # Later the container is gone (an admin removed it): the next poll releases the GPUs.
    del engine.containers["c1"]
    assert await spawner.poll() == 0
    assert held(ledger_url) == ()
    (release,) = [e for e in hub_resources.ledger(ledger_url).audit() if e.action == "release"]
    assert release.gpu_uuids == gpus and release.reason.startswith("container gone")
    assert GpuLifecycleSpawner.kept_gpus == {}  # nothing left to watch


async def test_the_hub_retries_the_stop_and_releases_the_gpus_once_the_container_is_gone(
    running, engine, ledger_url, caplog
):
    spawner = running(gpu_release_retry_interval=0.05)
    engine.stuck.add("c1")
    with pytest.raises(APIError):
        await spawner.stop()
    await asyncio.sleep(0.2)
    assert held(ledger_url) != ()  # still stuck: still held, retried with a growing interval
    assert "GPUs of alice still kept: container c1 could not be stopped" in caplog.text
    engine.stuck.clear()  # the engine recovers: the next retry removes the container
    for _ in range(100):
        if not held(ledger_url):
            break
        await asyncio.sleep(0.05)
    assert held(ledger_url) == () and "c1" not in engine.containers
    assert hub_resources.ledger(ledger_url).audit()[-1].reason == "container c1 gone after a failed stop"


async def test_starting_again_while_the_old_container_runs_is_refused_then_proceeds_once_it_is_gone(
    running, engine, ledger_url
):
    spawner = running()
    engine.stuck.add("c1")
    with pytest.raises(APIError):
        await spawner.stop()
    with pytest.raises(SpawnException) as refused:
        await spawner.settle_kept_gpus()
    assert refused.value.status_code == 503
    assert str(refused.value.log_message).startswith(
        "Your previous server's container c1 could not be stopped (cannot stop container: permission denied), "
        "so its GPUs are still held."
    )
    assert held(ledger_url) != ()
    engine.stuck.clear()
    await spawner.settle_kept_gpus()  # one more try now succeeds: the GPUs are released first
    assert held(ledger_url) == () and GpuLifecycleSpawner.kept_gpus == {}


async def test_a_poll_docker_cannot_answer_keeps_the_gpus(running, engine, ledger_url, caplog):
    spawner = running()
    engine.down = True
    await spawner.release_gpus("container gone (0)")
    assert held(ledger_url) != ()
    assert "GPUs of alice kept: container c1 may still run (Docker could not say whether it is gone" in caplog.text


async def test_a_stop_docker_confirms_releases_the_gpus_at_once(running, engine, ledger_url):
    spawner = running()
    await spawner.stop()
    assert held(ledger_url) == () and "c1" not in engine.containers
    assert hub_resources.ledger(ledger_url).audit()[-1].reason == "stopped"


async def test_a_failed_start_whose_container_was_never_created_releases_the_gpus(running, engine, ledger_url):
    spawner = running()
    del engine.containers["c1"]
    spawner.object_id = ""
    await spawner.release_gpus("failed start")
    assert held(ledger_url) == ()
