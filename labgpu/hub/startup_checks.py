"""At hub start: the workspace settings an admin wrote, held to the allowlist of
:mod:`labgpu.hub.admin_extras`, so that a hub that would refuse every spawn does not start.

The builder checks them again at each spawn, after templates are rendered for the user and
callables are called (those can only be checked then).
"""

from __future__ import annotations

import math
from typing import Any

from docker.types import Mount
from traitlets.config import Config

from labgpu.hub.admin_extras import admin_config_problems
from labgpu.hub.containers import MIN_CPUS
from labgpu.hub.spawner import GPUDockerSpawner

# The settings checked, and the sections traitlets reads them from for GPUDockerSpawner.
CHECKED_SETTINGS = (
    "extra_create_kwargs",
    "extra_host_config",
    "volumes",
    "read_only_volumes",
    "mounts",
    "network_name",
    "cpu_limit",
)
_SECTIONS = ("Spawner", "DockerSpawner", "GPUDockerSpawner")


def workspace_settings_problems(config: Config) -> list[str]:
    """Every problem of the spawner's workspace settings in ``config`` (the hub's whole
    configuration, the admin's files included), one line each; empty when they may be used."""
    checked = Config()
    for section in _SECTIONS:
        if section in config:
            for name in CHECKED_SETTINGS:
                if name in config[section] and not (name == "cpu_limit" and callable(config[section][name])):
                    checked[section][name] = config[section][name]
    # The spawner resolves the sections as for every spawn (GPUDockerSpawner over DockerSpawner
    # over Spawner); only the settings checked are given to it, so nothing else is evaluated.
    spawner = GPUDockerSpawner(config=checked)
    problems = admin_config_problems(
        extra_create_kwargs=spawner.extra_create_kwargs,
        extra_host_config=spawner.extra_host_config,
        volumes=spawner.volumes,
        read_only_volumes=spawner.read_only_volumes,
        mounts=[_as_docker_mount(m) for m in spawner.mounts],
        network=spawner.network_name,
    )
    cpus: Any = spawner.cpu_limit  # 0, DockerSpawner's default, means no limit
    if isinstance(cpus, (int, float)) and cpus != 0 and not (math.isfinite(cpus) and cpus >= MIN_CPUS):
        problems.append(
            f"cpu_limit must be at least {MIN_CPUS} CPUs, Docker's smallest, or 0 for no limit (got {cpus!r})"
        )
    return problems


def _as_docker_mount(mount: Any) -> Any:
    """DockerSpawner's ``mounts`` entry (docker.types.Mount's arguments) as the Mount it becomes."""
    try:
        return dict(Mount(**mount))
    except Exception:  # not Mount's arguments: reported as written
        return mount
