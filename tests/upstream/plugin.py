"""pytest plugin for DockerSpawner's upstream ``tests/test_dockerspawner.py``.

The sdist carries the test modules but not their ``conftest.py``; this plugin provides the
fixtures they use (JupyterHub's own ``app`` and ``user``, a hub whose spawner class is the one
under test, named servers, unique user names) and the loop scope they expect.

``LABGPU_UPSTREAM_SPAWNER=ours`` puts :class:`labgpu.hub.spawner.GPUDockerSpawner` in place of
``dockerspawner.DockerSpawner`` *before* the test module imports it, so that every
``DockerSpawner(...)``, ``isinstance(spawner, DockerSpawner)`` and the hub's spawner class are
ours, configured as a hub with no quota policy and no ledger (a CPU-only hub). Anything else
runs the suite as published, against DockerSpawner itself.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterator
from typing import Any
from unittest import mock

import dockerspawner
import pytest
import pytest_asyncio
from docker import from_env as docker_from_env
from docker.errors import APIError
from jupyterhub.tests.conftest import app as jupyterhub_app  # noqa: F401  # the fixtures upstream's tests use
from jupyterhub.tests.conftest import cleanup_after, io_loop, ssl_tmpdir, tmp_cwd, user  # noqa: F401
from jupyterhub.tests.mocking import MockHub
from jupyterhub.user import User

PREFIX = "dockerspawner-test"  # containers (and, for ours, volumes) the suite creates and removes
OURS = os.environ.get("LABGPU_UPSTREAM_SPAWNER", "") == "ours"
# The image the suite's workspaces run: the one this checkout's e2e tests use (the suite's
# default, quay.io/jupyterhub/singleuser, needs a registry this machine may not reach).
IMAGE = os.environ.get("LABGPU_IMAGE", "labgpu/workspace:local")

if OURS:
    from labgpu.hub.spawner import GPUDockerSpawner

    dockerspawner.DockerSpawner = GPUDockerSpawner
SPAWNER_CLASS: Any = dockerspawner.DockerSpawner

if os.path.isdir("/usr/share/nodejs/commander"):
    # Debian's configurable-http-proxy finds its modules only through NODE_PATH (as in jupyterhub_config.py)
    os.environ.setdefault("NODE_PATH", "/usr/share/nodejs")
# The hub listens everywhere and workspaces reach it at the gateway of Docker's bridge network.
MockHub.hub_ip = "0.0.0.0"


def _bridge_gateway() -> str | None:
    """The host's address on Docker's default bridge (its IPAM may list only the subnet)."""
    try:
        configs = docker_from_env().networks.get("bridge").attrs["IPAM"]["Config"] or []
    except Exception:  # no Docker: the tests that need it fail and say so
        return None
    for config in configs:
        if config.get("Gateway"):
            return str(config["Gateway"])
        if config.get("Subnet"):
            return str(ipaddress.ip_network(config["Subnet"])[1])
    return None


MockHub.hub_connect_ip = _bridge_gateway() or ""


def pytest_report_header() -> str:
    return f"upstream DockerSpawner suite against {SPAWNER_CLASS.__module__}.{SPAWNER_CLASS.__name__}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # upstream's tests share one hub per module: run them in the module's event loop
    marker = pytest.mark.asyncio(loop_scope="module")
    for item in items:
        if pytest_asyncio.is_async_test(item):
            closest = item.get_closest_marker("asyncio")
            if closest is None or not closest.kwargs:
                item.add_marker(marker, append=False)


@pytest.fixture
def app(jupyterhub_app: Any) -> Any:  # noqa: F811
    jupyterhub_app.config.DockerSpawner.prefix = PREFIX
    jupyterhub_app.config.DockerSpawner.image = IMAGE
    if OURS:
        # ours keeps each user's home in a volume: name it so that the clean-up finds it
        jupyterhub_app.config.GPUDockerSpawner.hub_id = PREFIX
        jupyterhub_app.config.GPUDockerSpawner.home_volume = PREFIX + "-home-{username}"
    return jupyterhub_app


@pytest.fixture
def named_servers(app: Any) -> Iterator[None]:
    with mock.patch.dict(app.tornado_settings, {"allow_named_servers": True, "named_server_limit_per_user": 2}):
        yield


@pytest.fixture
def dockerspawner_configured_app(app: Any, named_servers: None) -> Iterator[Any]:
    with (
        mock.patch.dict(app.tornado_settings, {"spawner_class": SPAWNER_CLASS}),
        mock.patch.object(User, "_new_spawner", _new_spawner_creating_its_server),
    ):
        yield app


_new_spawner = User._new_spawner


def _new_spawner_creating_its_server(self: User, server_name: str, *args: Any, **kwargs: Any) -> Any:
    """``user.spawners["name"]`` of a server not yet in the database: JupyterHub < 6 created it
    on first use, and the suite relies on that (in both runs alike)."""
    if server_name not in self.orm_spawners:
        self._new_orm_spawner(server_name, None)
    return _new_spawner(self, server_name, *args, **kwargs)


_counter = 0


@pytest.fixture
def username() -> str:
    global _counter
    _counter += 1
    return f"test-user-{_counter}"


@pytest.fixture(autouse=True, scope="session")
def docker() -> Iterator[Any]:
    """A Docker client; removes the containers and volumes the suite leaves behind."""
    client = docker_from_env()
    try:
        yield client
    finally:
        for container in client.containers.list(all=True):
            if container.name.startswith(PREFIX):
                with contextlib.suppress(APIError):
                    container.remove(force=True)
        for volume in client.volumes.list():
            if volume.name.startswith(PREFIX):
                with contextlib.suppress(APIError):
                    volume.remove(force=True)
