"""Which user a GPU process belongs to: host PID -> /proc/PID/cgroup -> Docker container id ->
the container's ``org.labgpu.*`` labels -> user and server.

Runs in the poller's process, which needs the host's PID namespace (its /proc) and the Docker
API for labels. Processes outside our workspaces are recorded too, as another container or the
host: they still occupy a GPU. Only this hub's workspaces (label ``org.labgpu.hub``) are
attributed to users, so two hubs on one Docker engine never charge each other's users.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from labgpu.gpus.telemetry import CONTAINER, GONE, HOST, WORKSPACE, Owner
from labgpu.labels import LABEL_HUB, LABEL_SERVER, LABEL_USER

log = logging.getLogger(__name__)


# cgroup v1: ".../docker/<64 hex>"; cgroup v2 (systemd driver): ".../docker-<64 hex>.scope".
_CONTAINER_ID = re.compile(r"(?:/docker/|/docker-)([0-9a-f]{64})(?:\.scope)?(?=/|$)", re.MULTILINE)


def container_id_from_cgroup(cgroup_text: str) -> str | None:
    """The Docker container id in a /proc/PID/cgroup file (v1 or v2 layout), or None."""
    match = _CONTAINER_ID.search(cgroup_text)
    return match.group(1) if match else None


LabelLookup = Callable[[str], "Mapping[str, str] | None"]
"""Container id -> its labels, or None when no such container exists (in production:
:func:`docker_label_lookup`)."""


class ProcessAttributor:
    """Maps host PIDs to owners. ``proc_root`` is the host's /proc (the poller needs host PID
    access), or a synthetic tree in tests; container labels are cached, since they never change
    for the life of a container, and a failed lookup is retried on the next tick."""

    def __init__(
        self,
        label_lookup: LabelLookup | None,
        proc_root: str | os.PathLike[str] = "/proc",
        cache_size: int = 4096,
        id_from_cgroup: Callable[[str], str | None] = container_id_from_cgroup,
    ) -> None:
        """``id_from_cgroup``: a process's container id from its cgroup file (on Kubernetes, its
        pod's UID: :func:`labgpu.kube.placement.pod_uid_from_cgroup`), the key of ``label_lookup``."""
        self.label_lookup = label_lookup
        self.id_from_cgroup = id_from_cgroup
        self.proc_root = Path(proc_root)
        self.cache_size = cache_size
        self._owners_by_container: OrderedDict[str, Owner] = OrderedDict()
        self._failing: set[str] = set()  # containers whose labels could not be read (logged once)

    def owner_of(self, pid: int) -> Owner:
        try:
            cgroup_text = (self.proc_root / str(pid) / "cgroup").read_text()
        except OSError:
            return Owner(GONE)
        container_id = self.id_from_cgroup(cgroup_text)
        if container_id is None:
            return Owner(HOST)
        cached = self._owners_by_container.get(container_id)
        if cached is not None:
            return cached
        if self.label_lookup is None:
            return Owner(CONTAINER, container_id)
        try:
            labels = self.label_lookup(container_id)
        except Exception as error:  # Docker down: record the container id, ask again next tick
            if container_id not in self._failing:
                log.warning(
                    "Cannot read the labels of container %s (%s); recording its id and retrying each tick",
                    container_id[:12],
                    error,
                )
                self._failing.add(container_id)
            return Owner(CONTAINER, container_id)
        self._failing.discard(container_id)
        labels = labels or {}
        if LABEL_USER in labels:
            owner = Owner(WORKSPACE, container_id, labels[LABEL_USER], labels.get(LABEL_SERVER, ""))
        else:
            owner = Owner(CONTAINER, container_id)
        self._owners_by_container[container_id] = owner
        if len(self._owners_by_container) > self.cache_size:
            self._owners_by_container.popitem(last=False)
        return owner


# --------------------------------------------------------------------------------------------
# Labels from Docker: only this hub's workspaces name a user
# --------------------------------------------------------------------------------------------


def workspace_labels(labels: Mapping[str, str], hub_id: str) -> Mapping[str, str]:
    """A container's labels, without its user and server when another hub (or nobody) runs it."""
    if labels.get(LABEL_HUB) == hub_id:
        return labels
    return {k: v for k, v in labels.items() if k not in (LABEL_USER, LABEL_SERVER)}


def docker_label_lookup(hub_id: str) -> LabelLookup:
    """Container id -> labels through the Docker API (DOCKER_HOST or the local socket). Only
    this hub's workspaces (``LABEL_HUB`` = ``hub_id``) keep their user and server labels; any
    other container is recorded as a container. The client connects on first use, so a Docker
    daemon that is down at boot only delays the attribution (the attributor records container
    ids meanwhile and asks again)."""
    import docker  # only when the poller runs for real
    from docker.errors import NotFound

    clients: list[Any] = []

    def labels_of(container_id: str) -> Mapping[str, str] | None:
        if not clients:
            clients.append(docker.from_env())
        try:
            labels = clients[0].containers.get(container_id).labels or {}
        except NotFound:
            return None
        return workspace_labels(labels, hub_id)

    return labels_of
