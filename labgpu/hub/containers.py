"""Pure builders for workspace containers: limits, volumes and labels in, Docker API kwargs out.

Like kubespawner's ``objects.py``: no I/O here. The spawner gathers its inputs, calls
:func:`container_config`, and hands the result to the Docker API. Hardening is applied last,
so neither an admin's ``extra_host_config`` nor a user's request can undo it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from labgpu.hub.admin_extras import ContainerConfigError as ContainerConfigError  # re-exported: the builder's error
from labgpu.hub.admin_extras import (
    checked_binds,
    create_kwargs_problems,
    environment_mapping,
    host_config_problems,
    mount_problems,
    network_problem,
    parse_binds,
    workspace_user,
)
from labgpu.labels import LABEL_GPUS, LABEL_HUB, LABEL_MANAGED, LABEL_SERVER, LABEL_USER, gpus_value

# Docker's smallest CPU limit: a quota of 1 ms per period of 100 ms. Below it the quota rounds to 0,
# which Docker takes as "no limit at all".
MIN_CPUS = 0.01
MIN_CPU_QUOTA = 1000  # microseconds, Docker's own minimum
DEFAULT_CPU_PERIOD = 100_000  # microseconds: DockerSpawner's (and the kernel's) 100 ms


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
    # The admin's DockerSpawner ``mounts``, as docker.types.Mount ({"Type", "Source", "Target", ...}).
    mounts: tuple[Mapping[str, Any], ...] = ()
    run_as_uid: str = "1000"
    run_as_gid: str = "100"
    group_add: tuple[str, ...] = ()  # supplementary gids: the user's groups' shared folders
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
    """What the workspace is told about its GPUs (the doctor checks the devices against it).

    ``NVIDIA_VISIBLE_DEVICES`` is always set: images set it to ``all``, and an NVIDIA runtime hook
    that reads it (the legacy runtime, or one beside CDI) would otherwise expose every GPU."""
    env = {"LABGPU_GPUS": ",".join(gpu_uuids)}
    if not gpu_uuids:
        env["NVIDIA_VISIBLE_DEVICES"] = "void"  # no GPUs granted: no runtime hook exposes any
        return env
    env["NVIDIA_VISIBLE_DEVICES"] = ",".join(gpu_uuids)
    if driver == "simulated":
        # No device is attached; the doctor reports the GPUs as simulated and checks the env
        # against the grant.
        env["LABGPU_GPUS_SIMULATED"] = "1"
    else:
        # CUDA's default order differs from NVML's; PCI order matches `nvidia-smi`.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    return env


def cpu_period_and_quota(cpus: float, host_cpus: int | None, period: int = DEFAULT_CPU_PERIOD) -> tuple[int, int]:
    """A CPU limit as DockerSpawner sets it (``cpu_quota = cpu_limit * cpu_period``), capped at the
    host's CPUs (Docker refuses more); refused below Docker's minimum, where the quota would round
    to 0, which Docker takes as no limit at all."""
    if not (math.isfinite(cpus) and cpus >= MIN_CPUS):
        raise ContainerConfigError(f"a CPU limit must be at least {MIN_CPUS} CPUs, Docker's smallest (got {cpus!r})")
    if host_cpus:
        cpus = min(cpus, host_cpus)
    quota = round(cpus * period)
    if quota < MIN_CPU_QUOTA:
        raise ContainerConfigError(
            f"a CPU limit of {cpus:g} CPUs with cpu_period {period} is a quota of {quota} microseconds; "
            f"Docker's smallest is {MIN_CPU_QUOTA} (raise extra_host_config.cpu_period)"
        )
    return period, quota


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


def admin_extras_problems(spec: WorkspaceSpec) -> list[str]:
    """What in this spawn's admin configuration (rendered for its user) is not on the allowlist."""
    problems = create_kwargs_problems(spec.extra_create_kwargs)
    problems += host_config_problems(spec.extra_host_config)
    problems += checked_binds("volumes", spec.volumes)[1]
    problems += mount_problems(spec.mounts)
    if "user" not in spec.extra_create_kwargs:
        _, problem = workspace_user(spec.run_as_uid, spec.run_as_gid)
        if problem:
            problems.append(f"run_as_uid {problem}")
    network = network_problem(spec.network)
    return problems + ([network] if network else [])


def container_config(spec: WorkspaceSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(create_kwargs, host_config_kwargs)`` for docker-py's ``create_container`` and
    ``create_host_config``.

    What an admin's configuration adds must be on :mod:`labgpu.hub.admin_extras`' allowlist, or
    nothing is built. Admin extras are merged first; the hardening (non-root user,
    no-new-privileges, all capabilities dropped, no privileged mode) is applied after them.
    """
    problems = admin_extras_problems(spec)
    if problems:
        raise ContainerConfigError("; ".join(problems))
    extra_create = dict(spec.extra_create_kwargs)
    if "environment" in extra_create:
        extra_create["environment"] = environment_mapping(extra_create["environment"])
    user, _ = workspace_user(extra_create.pop("user", spec.run_as_uid), spec.run_as_gid)

    create_kwargs: dict[str, Any] = {
        "image": spec.image,
        "name": spec.name,
        "environment": dict(spec.environment),
        "labels": {},
        "ports": {f"{spec.port}/tcp": None},
    }
    if spec.command:
        create_kwargs["command"] = list(spec.command)
    _deep_merge(create_kwargs, extra_create)
    # What the workspace is told about its GPUs and its labels always match the grant.
    create_kwargs["environment"].update(gpu_environment(spec.gpu_uuids, spec.gpu_driver))
    create_kwargs["labels"].update(workspace_labels(spec))
    create_kwargs["user"] = user

    extra_host = dict(spec.extra_host_config)
    binds = checked_binds("volumes", spec.volumes)[0]
    # Admin-configured binds pass the same check as ours and add to them.
    binds.update(checked_binds("extra_host_config.binds", parse_binds(extra_host.pop("binds", None) or {})[0])[0])
    create_kwargs["volumes"] = sorted(b["bind"] for b in binds.values())

    host_config: dict[str, Any] = {
        "auto_remove": spec.auto_remove,
        "binds": binds,
        "shm_size": spec.shm_size,
        "pids_limit": spec.pids_limit,
        "init": True,
        "network_mode": spec.network,
    }
    if spec.mounts:
        host_config["mounts"] = list(spec.mounts)
    if spec.mem_limit is not None:
        host_config["mem_limit"] = spec.mem_limit
        host_config["memswap_limit"] = spec.mem_limit  # memory + swap = memory: no swap on top
    if spec.mem_reservation is not None:
        host_config["mem_reservation"] = spec.mem_reservation
    if spec.cpu_limit is not None:
        period = extra_host.pop("cpu_period", DEFAULT_CPU_PERIOD)
        host_config["cpu_period"], host_config["cpu_quota"] = cpu_period_and_quota(
            spec.cpu_limit, spec.host_cpus, period
        )
    device_requests = gpu_device_requests(spec.gpu_uuids, spec.gpu_driver, spec.cdi_vendor_class)
    if device_requests:
        host_config["device_requests"] = device_requests
    if spec.publish_on is not None:
        host_config["port_bindings"] = {spec.port: (spec.publish_on,)}
    _deep_merge(host_config, extra_host)
    if spec.group_add:
        admins = [str(g) for g in host_config.get("group_add") or []]
        host_config["group_add"] = admins + [g for g in spec.group_add if g not in admins]

    # Hardening, last so nothing above can undo it.
    security_opt = [o for o in host_config.get("security_opt") or [] if not o.startswith("no-new-privileges")]
    host_config["security_opt"] = [*security_opt, "no-new-privileges:true"]
    host_config["cap_drop"] = ["ALL"]
    host_config["privileged"] = False
    return create_kwargs, host_config
