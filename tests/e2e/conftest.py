from __future__ import annotations

import pytest

from tests.conftest import docker_available, image_available, proxy_available, require
from tests.harness import WORKSPACE_IMAGE, HubProcess


@pytest.fixture(scope="session")
def real_parts():
    require(docker_available(), "the Docker engine", "start dockerd (scripts/setup.sh installs what the tests need)")
    require(
        proxy_available(), "configurable-http-proxy", "apt-get install node-configurable-http-proxy (scripts/setup.sh)"
    )
    require(image_available(WORKSPACE_IMAGE), f"the workspace image {WORKSPACE_IMAGE}", "run scripts/build-images.sh")


@pytest.fixture(scope="module")
def hub(real_parts, request):
    """A real hub with users alice and bob, torn down with its containers and volumes."""
    h = HubProcess(users=["alice", "bob"])
    try:
        h.start()
        yield h
    finally:
        if request.session.testsfailed:
            print(f"\n--- hub log ({h.hub_id}) ---\n{h.log_tail(120)}")
        h.cleanup()
