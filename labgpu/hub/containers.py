"""Pure builders for workspace containers: limits, volumes and labels in, Docker API kwargs out.

Like kubespawner's ``objects.py``: no I/O here. The spawner gathers its inputs, calls
:func:`container_config`, and hands the result to the Docker API. Hardening is applied last,
so neither an admin's ``extra_host_config`` nor a user's request can undo it.
"""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from labgpu.labels import LABEL_GPUS, LABEL_HUB, LABEL_MANAGED, LABEL_SERVER, LABEL_USER, gpus_value

# Paths that give a container control over the host; never mounted into a workspace.
FORBIDDEN_HOST_PATHS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/run/containerd",
    "/run/containerd",
    "/var/lib/docker",
    "/",
)

# Host-config keys that would undo the isolation of a workspace; an admin's
# extra_host_config may not set them (they are refused, not silently dropped).
FORBIDDEN_HOST_CONFIG = {
    "privileged": "privileged containers can take over the host",
    "cap_add": "added capabilities weaken the isolation of a workspace",
    "pid_mode": "sharing the host's PID namespace exposes every process",
    "ipc_mode": "sharing IPC namespaces leaks memory between workspaces",
    "userns_mode": "leaving the user namespace undoes the non-root user",
    "devices": "raw host devices bypass the GPU allocator (GPUs go through DeviceRequests)",
    "device_requests": "GPUs are assigned by the allocator, not by configuration",
}


class ContainerConfigError(ValueError):
    """The requested container would be unsafe or malformed; the message says what to change."""


@dataclass(frozen=True)
class WorkspaceSpec:
    """Everything that decides what a workspace container looks like."""

    name: str
    image: str
    user: str  # JupyterHub user name, for labels
    server: str  # "" for the default server
    hub_id: str
    environment: Mapping[str, str]
    command: list[str] | None = None
    port: int = 8888
    # Docker volume name (or host path) -> mount point, with an optional mode.
    volumes: Mapping[str, str | Mapping[str, str]] = field(default_factory=dict)
    run_as_uid: str = "1000"
    run_as_gid: str = "100"
    shm_size: int = 2 * 1024**3
    mem_limit: int | None = None
    mem_reservation: int | None = None  # soft guarantee, reclaimed from above it under pressure
    cpu_limit: float | None = None
    pids_limit: int = 4096
    host_cpus: int | None = None  # CPUs of the Docker host; a larger limit means "all of them"
    network: str = "bridge"
    publish_on: str | None = "127.0.0.1"  # host IP the port is published on; None = not published
    auto_remove: bool = True
    # GPUs this server was granted (UUIDs, or MIG device UUIDs), in the allocator's order.
    gpu_uuids: tuple[str, ...] = ()
    # "nvidia": DeviceRequest with explicit DeviceIDs (NVIDIA Container Toolkit);
    # "cdi": CDI device names (Docker 25+ with CDI on), for GPUs and MIG devices alike;
    # "simulated": no device request (demo and tests: labgpu.gpus.simulated), only the env and labels.
    gpu_driver: str = "nvidia"
    cdi_vendor_class: str = "nvidia.com/gpu"
    extra_create_kwargs: Mapping[str, Any] = field(default_factory=dict)
    extra_host_config: Mapping[str, Any] = field(default_factory=dict)


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _host_path_forbidden(source: str) -> bool:
    if not source.startswith("/"):
        return False  # a named Docker volume
    path = posixpath.normpath(source)
    for forbidden in FORBIDDEN_HOST_PATHS:
        if path == forbidden or (forbidden != "/" and path.startswith(forbidden + "/")):
            return True
    return False


def volume_binds(volumes: Mapping[str, str | Mapping[str, str]]) -> dict[str, dict[str, str]]:
    """``{source: target}`` or ``{source: {bind, mode}}`` -> docker-py binds, refusing host control paths."""
    binds: dict[str, dict[str, str]] = {}
    for source, target in volumes.items():
        if isinstance(target, Mapping):
            bind, mode = target["bind"], target.get("mode", "rw")
        else:
            bind, mode = target, "rw"
        if _host_path_forbidden(source):
            raise ContainerConfigError(
                f"volume {source!r} -> {bind!r} would give the workspace control of the host; "
                "mount a data directory or a named volume instead"
            )
        if mode not in ("rw", "ro"):
            raise ContainerConfigError(f"volume {source!r}: mode must be 'rw' or 'ro' (got {mode!r})")
        binds[source] = {"bind": bind, "mode": mode}
    return binds


def _parse_binds(binds: Mapping[str, Any] | list[str]) -> Mapping[str, Any]:
    """Accept docker-py's dict form or the CLI's ["src:dst[:mode]", ...] form."""
    if isinstance(binds, Mapping):
        return binds
    parsed: dict[str, dict[str, str]] = {}
    for entry in binds:
        parts = str(entry).split(":")
        if len(parts) not in (2, 3):
            raise ContainerConfigError(f"bind {entry!r} must be 'source:target' or 'source:target:mode'")
        parsed[parts[0]] = {"bind": parts[1], "mode": parts[2] if len(parts) == 3 else "rw"}
    return parsed


def workspace_labels(spec: WorkspaceSpec) -> dict[str, str]:
    """The labels that let the hub reconcile its ledger with Docker after a crash, and the poller
    attribute GPU processes: owner, server, hub and the granted GPUs."""
    return {
        LABEL_MANAGED: "true",
        LABEL_HUB: spec.hub_id,
        LABEL_USER: spec.user,
        LABEL_SERVER: spec.server,
        LABEL_GPUS: gpus_value(spec.gpu_uuids),
    }


def gpu_device_requests(gpu_uuids: tuple[str, ...], driver: str, cdi_vendor_class: str) -> list[dict[str, Any]]:
    """Docker DeviceRequests for exactly these GPUs: never a count, so never "all GPUs"."""
    if not gpu_uuids:
        return []
    if any(not u or "," in u for u in gpu_uuids):
        raise ContainerConfigError(f"malformed GPU identifiers {list(gpu_uuids)!r}")
    if driver == "nvidia":
        return [{"driver": "nvidia", "device_ids": list(gpu_uuids), "capabilities": [["gpu"]]}]
    if driver == "cdi":
        return [{"driver": "cdi", "device_ids": [f"{cdi_vendor_class}={u}" for u in gpu_uuids]}]
    if driver == "simulated":
        return []  # simulated GPUs: nothing to attach
    raise ContainerConfigError(f"gpu_driver must be 'nvidia', 'cdi' or 'simulated' (got {driver!r})")


def gpu_environment(gpu_uuids: tuple[str, ...], driver: str = "nvidia") -> dict[str, str]:
    """What the workspace is told about its GPUs (the doctor checks the devices against it)."""
    env = {"LABGPU_GPUS": ",".join(gpu_uuids)}
    if gpu_uuids and driver == "simulated":
        # No device is attached; the doctor reports the GPUs as simulated and checks the env
        # against the grant. The image's own NVIDIA_VISIBLE_DEVICES (often "all") never leaks.
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(gpu_uuids)
        env["LABGPU_GPUS_SIMULATED"] = "1"
    elif gpu_uuids:
        # CUDA's default order differs from NVML's; PCI order matches `nvidia-smi`.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    else:
        # No GPUs granted: make sure no runtime hook exposes any.
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
    return env


def render_templates(obj: Any, namespace: Mapping[str, Any]) -> Any:
    """Format every string in ``obj`` (dict keys and values, list and tuple items) with
    ``namespace``, as DockerSpawner does with ``extra_create_kwargs`` and ``extra_host_config``
    (``{username}``, ``{servername}``, ...). A string that is not a valid template (a literal
    ``{``) is left as it is. (DockerSpawner's ``_render_templates`` does the same, but is private.)"""
    if isinstance(obj, str):
        try:
            return obj.format(**namespace)
        except (ValueError, KeyError, IndexError):
            return obj
    if isinstance(obj, dict):
        return {render_templates(k, namespace): render_templates(v, namespace) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(render_templates(item, namespace) for item in obj)
    return obj


def container_config(spec: WorkspaceSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(create_kwargs, host_config_kwargs)`` for docker-py's ``create_container`` and
    ``create_host_config``.

    Admin extras are merged first; the hardening (non-root user, no-new-privileges, all
    capabilities dropped, no privileged mode, no host control paths) is applied after them.
    """
    for key, why in FORBIDDEN_HOST_CONFIG.items():
        value = spec.extra_host_config.get(key)
        if value:
            raise ContainerConfigError(f"extra_host_config.{key} is not allowed: {why}")
    user = str(spec.extra_create_kwargs.get("user", spec.run_as_uid))
    if user.split(":")[0] in ("0", "root", ""):
        raise ContainerConfigError(
            "workspaces run as a non-root user; remove 'user' from extra_create_kwargs or set it to a non-zero uid"
        )

    create_kwargs: dict[str, Any] = {
        "image": spec.image,
        "name": spec.name,
        "environment": dict(spec.environment),
        "labels": {},
        "ports": {f"{spec.port}/tcp": None},
    }
    if spec.command:
        create_kwargs["command"] = list(spec.command)
    _deep_merge(create_kwargs, spec.extra_create_kwargs)
    # What the workspace is told about its GPUs and its labels always match the grant.
    create_kwargs["environment"].update(gpu_environment(spec.gpu_uuids, spec.gpu_driver))
    create_kwargs["labels"].update(workspace_labels(spec))
    if ":" not in user:
        user = f"{user}:{spec.run_as_gid}"
    create_kwargs["user"] = user

    extra_host = dict(spec.extra_host_config)
    binds = volume_binds(spec.volumes)
    # Admin-configured binds pass the same check as ours and add to them.
    binds.update(volume_binds(_parse_binds(extra_host.pop("binds", None) or {})))
    create_kwargs["volumes"] = sorted(b["bind"] for b in binds.values())
    for opt in extra_host.get("security_opt") or []:
        if "unconfined" in opt:
            raise ContainerConfigError(
                f"extra_host_config.security_opt {opt!r} is not allowed: it turns off a kernel sandbox"
            )

    host_config: dict[str, Any] = {
        "auto_remove": spec.auto_remove,
        "binds": binds,
        "shm_size": spec.shm_size,
        "pids_limit": spec.pids_limit,
        "init": True,
        "network_mode": spec.network,
    }
    if spec.mem_limit is not None:
        host_config["mem_limit"] = spec.mem_limit
    if spec.mem_reservation is not None:
        host_config["mem_reservation"] = spec.mem_reservation
    if spec.cpu_limit is not None:
        cpus = spec.cpu_limit if not spec.host_cpus else min(spec.cpu_limit, spec.host_cpus)
        host_config["nano_cpus"] = int(cpus * 1e9)
    device_requests = gpu_device_requests(spec.gpu_uuids, spec.gpu_driver, spec.cdi_vendor_class)
    if device_requests:
        host_config["device_requests"] = device_requests
    if spec.publish_on is not None:
        host_config["port_bindings"] = {spec.port: (spec.publish_on,)}
    _deep_merge(host_config, extra_host)

    # Hardening, last so nothing above can undo it.
    security_opt = [o for o in host_config.get("security_opt") or [] if not o.startswith("no-new-privileges")]
    host_config["security_opt"] = [*security_opt, "no-new-privileges:true"]
    host_config["cap_drop"] = ["ALL"]
    host_config["privileged"] = False
    return create_kwargs, host_config
