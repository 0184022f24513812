"""The Docker network workspaces live on, and the address they reach the hub at."""

from __future__ import annotations

import docker
from docker.errors import APIError, DockerException, NotFound

from labgpu.labels import managed_labels


class DockerUnavailable(RuntimeError):
    """The Docker engine cannot be reached; the message says what to check."""


def ensure_workspace_network(name: str) -> str:
    """Create the bridge network ``name`` if it is missing and return its gateway IP.

    Workspaces on it cannot reach each other (inter-container traffic is off); they reach
    the hub's API at the gateway, which is where the hub listens.
    """
    try:
        client = docker.from_env()
        try:
            network = client.networks.get(name)
        except NotFound:
            network = client.networks.create(
                name,
                driver="bridge",
                options={"com.docker.network.bridge.enable_icc": "false"},
                labels=managed_labels(),
            )
            network.reload()
    except (DockerException, APIError) as e:
        raise DockerUnavailable(
            f"cannot reach the Docker engine to set up network {name!r}: {e}. "
            "Is dockerd running, and may this user talk to it (DOCKER_HOST, /var/run/docker.sock)?"
        ) from None
    configs = (network.attrs.get("IPAM") or {}).get("Config") or []
    for config in configs:
        if config.get("Gateway"):
            return str(config["Gateway"])
    raise DockerUnavailable(f"Docker network {name!r} has no gateway address; recreate it as a bridge network")
