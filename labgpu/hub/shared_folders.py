"""Lab groups' shared folders: one Docker volume per group, mounted at ``<home>/shared/<group>``
in every member's workspace, created on first use and owned by the workspace user.

A new Docker volume mounted where the image has no directory belongs to root, and the user
could not write to it; so the first spawn that needs it chowns it in a throwaway container
(no network, only the CHOWN and FOWNER capabilities). A volume that exists already is the
admin's: it is used as it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from docker.errors import NotFound
from jupyterhub.spawner import SpawnException

from labgpu.labels import KIND_GROUP_SHARE, managed_labels

DockerCall = Callable[..., Awaitable[Any]]  # DockerSpawner.docker: (method, *args, **kwargs), off the event loop


def shared_folder_binds(shared_volumes: Mapping[str, str], home_mount: str) -> dict[str, dict[str, str]]:
    """``{group: volume}`` -> binds of each group's volume at ``<home>/shared/<group>``."""
    return {volume: {"bind": f"{home_mount}/shared/{group}", "mode": "rw"} for group, volume in shared_volumes.items()}


async def ensure_shared_volumes(
    docker: DockerCall,
    host_config: Callable[..., Any],
    volumes: Mapping[str, Any],
    *,
    image: str,
    uid: str,
    gid: str,
    timeout: float = 60,
) -> list[str]:
    """Create the missing volumes among ``volumes`` and hand them to ``uid:gid`` (setgid, group
    writable). ``host_config`` is docker-py's ``create_host_config``. Returns the created ones."""
    created = []
    for volume in volumes:
        try:
            await docker("inspect_volume", volume)
            continue
        except NotFound:
            pass
        await docker("create_volume", volume, labels=managed_labels(KIND_GROUP_SHARE))
        container = await docker(
            "create_container",
            image,
            command=["sh", "-c", f"chown {uid}:{gid} /share && chmod 2775 /share"],
            user="0",
            network_disabled=True,
            host_config=host_config(
                binds={volume: {"bind": "/share", "mode": "rw"}},
                cap_drop=["ALL"],
                cap_add=["CHOWN", "FOWNER"],
                network_mode="none",
            ),
        )
        try:
            await docker("start", container["Id"])
            result = await docker("wait", container["Id"], timeout=timeout)
            if result.get("StatusCode") != 0:
                raise SpawnException(
                    f"Could not prepare the shared folder volume {volume!r}; ask the hub's admin.",
                    reason="docker",
                    status_code=500,
                )
        finally:
            await docker("remove_container", container["Id"], force=True)
        created.append(volume)
    return created
