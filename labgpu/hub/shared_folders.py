"""Lab groups' shared folders: one Docker volume per folder, mounted at ``/shared/<group>`` in
every member's workspace (outside the user-writable home), with a link ``<home>/shared`` ->
``/shared`` so that JupyterLab's file browser finds them.

Names: the quota file gives each group's folder a name (the group's own for ``shared_volume:
true``); its volume is ``<hub_id>-group-<name>`` (:func:`labgpu.quota.volumes.group_volume_name`),
so that a quota file can reach no other volume (a user's home, another hub's folders) and two
hubs on one engine keep their folders apart.

Preparation: a new volume belongs to root, and a mount point inside the home would rest the
workspace's safety on how the runtime handles a symlink the user put there; so the folders are
mounted under ``/shared``, and the first spawn that needs a folder (in each hub process, and again
after a failure) gives its root to the workspace user, setgid and group-writable, in a throwaway
container (no network, only the CHOWN, FOWNER, FSETID and DAC_OVERRIDE capabilities). Running it again is
harmless: that is how a folder a failed preparation left to root gets repaired.

With a uid per user and a gid per group (:mod:`labgpu.hub.workspace_users`), a folder's root
belongs to root and the group's gid, mode 3775: members write in it (group-writable), new files
get the group (setgid) and show who wrote them, and only a file's owner removes it (sticky).
Files of the one-uid layout before (uid 1000) become the group's, group-writable, once. The
home is handed to its user's uid the first time it is not theirs (an existing home keeps working).
"""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from docker.errors import NotFound
from jupyterhub.spawner import SpawnException

from labgpu.labels import KIND_GROUP_SHARE, managed_labels
from labgpu.quota.volumes import group_volume_name

DockerCall = Callable[..., Awaitable[Any]]  # DockerSpawner.docker: (method, *args, **kwargs), off the event loop

SHARED_ROOT = "/shared"  # where the folders are mounted in a workspace; <home>/shared links here

# Folders (volume, uid:gid) and homes (volume) this hub process has prepared: done once per
# process; a failed preparation is not recorded, so the next spawn tries again.
_prepared_folders: set[tuple[str, str]] = set()
_linked_homes: set[str] = set()


def shared_folder_binds(folders: Mapping[str, str], hub_id: str) -> dict[str, dict[str, str]]:
    """``{group: folder name}`` -> binds of each folder's volume at ``/shared/<group>``."""
    return {
        group_volume_name(hub_id, folder): {"bind": f"{SHARED_ROOT}/{group}", "mode": "rw"}
        for group, folder in folders.items()
    }


LEGACY_UID = "1000"  # the image's jovyan: every workspace ran as it before uids per user


def preparation_script(
    folders: list[str],
    home: str | None,
    uid: str,
    gid: str,
    *,
    folder_gids: Mapping[str, str] | None = None,
    own_home: bool = False,
    link_shared: bool = True,
) -> str:
    """The shell commands that hand ``folders`` (mount points) to ``uid:gid`` (or, for those in
    ``folder_gids``, to root and that group's gid, group-writable, setgid and sticky) and, with
    ``home``, link ``<home>/shared`` to the folders (``own_home``: and hand the home to ``uid:gid``
    when its root is not theirs yet). An old home's root-owned, empty ``shared`` directory (the
    mount points of the layout before /shared) is removed first; nothing else is touched."""
    owner = shlex.quote(f"{uid}:{gid}")
    lines = ["set -e"]
    for folder in folders:
        path = shlex.quote(folder)
        group_gid = (folder_gids or {}).get(folder)
        if group_gid is None:
            lines.append(f"chown {owner} {path} && chmod 2775 {path}")
            continue
        group_owner = shlex.quote(f"0:{group_gid}")
        lines += [
            # Once: what the one-uid layout wrote (uid 1000) becomes the group's, group-writable.
            f'if [ "$(stat -c %g {path})" != {shlex.quote(group_gid)} ]; then '
            f"find {path} -xdev -uid {LEGACY_UID} ! -type l -exec chmod g+rwX {{}} + ; "
            f"find {path} -xdev -uid {LEGACY_UID} -exec chown -h {group_owner} {{}} + ; fi",
            f"chown {group_owner} {path} && chmod 3775 {path}",
        ]
    if home is not None and own_home:
        root = shlex.quote(home)
        lines.append(f'if [ "$(stat -c %u {root})" != {shlex.quote(uid)} ]; then chown -R {owner} {root}; fi')
    if home is not None and link_shared:
        link = shlex.quote(f"{home}/shared")
        lines += [
            f'if [ -d {link} ] && [ ! -L {link} ] && [ "$(stat -c %u {link})" = 0 ]; then '
            f"rmdir {link}/* {link} 2>/dev/null || true; fi",
            f"[ -e {link} ] || [ -L {link} ] || {{ ln -sn {SHARED_ROOT} {link} && chown -h {owner} {link}; }}",
        ]
    return "\n".join(lines)


async def prepare_shared_folders(
    docker: DockerCall,
    host_config: Callable[..., Any],
    binds: Mapping[str, Mapping[str, str]],
    *,
    image: str,
    uid: str,
    gid: str,
    home_volume: str,
    home_mount: str,
    folder_gids: Mapping[str, str] | None = None,
    own_home: bool = False,
    timeout: float = 60,
) -> list[str]:
    """Create the missing volumes among ``binds`` (from :func:`shared_folder_binds`), hand each
    folder's root to ``uid:gid`` (or to its group's gid in ``folder_gids``, volume -> gid) and link
    the home to them (``own_home``: and hand the home to ``uid:gid``), unless this process did so
    already. ``host_config`` is docker-py's ``create_host_config``. Returns the volumes it created."""
    if not binds and not own_home:
        return []
    folder_gids = folder_gids or {}
    created = []
    for volume in binds:
        try:
            await docker("inspect_volume", volume)
        except NotFound:
            await docker("create_volume", volume, labels=managed_labels(KIND_GROUP_SHARE))
            created.append(volume)
    owner = f"{uid}:{gid}"
    todo = {
        v: b
        for v, b in binds.items()
        if (v, f"0:{folder_gids[v]}" if v in folder_gids else owner) not in _prepared_folders
    }
    home_key = f"{home_volume}:{uid}" if own_home else home_volume
    link_home = home_key not in _linked_homes
    if not todo and not link_home:
        return created
    # The home is mounted where the workspace mounts it, so that a new home volume gets the
    # image's home (and its owner) copied in, as it would at the workspace's first start.
    mounts = {volume: {"bind": bind["bind"], "mode": "rw"} for volume, bind in binds.items()}
    mounts[home_volume] = {"bind": home_mount, "mode": "rw"}
    script = preparation_script(
        [b["bind"] for b in todo.values()],
        home_mount if link_home else None,
        uid,
        gid,
        folder_gids={b["bind"]: folder_gids[v] for v, b in todo.items() if v in folder_gids},
        own_home=own_home,
        link_shared=bool(binds),
    )
    container = await docker(
        "create_container",
        image,
        command=["sh", "-c", script],
        user="0",
        network_disabled=True,
        host_config=host_config(
            binds=mounts,
            cap_drop=["ALL"],
            # FSETID: chmod keeps the setgid bit on a folder whose group root is not in.
            cap_add=["CHOWN", "FOWNER", "FSETID", "DAC_OVERRIDE"],
            security_opt=["no-new-privileges:true"],
            network_mode="none",
        ),
    )
    try:
        await docker("start", container["Id"])
        result = await docker("wait", container["Id"], timeout=timeout)
        if result.get("StatusCode") != 0:
            logs = await docker("logs", container["Id"], tail=5)
            detail = logs.decode(errors="replace").strip() if isinstance(logs, bytes) else str(logs)
            raise SpawnException(
                f"Could not prepare the shared folders {', '.join(sorted(todo))}; the next start tries again. "
                "If it keeps failing, ask the hub's admin.",
                reason="docker",
                log_message=f"preparing shared folders {sorted(todo)} failed ({result.get('StatusCode')}): {detail}",
                status_code=500,
            )
    finally:
        await docker("remove_container", container["Id"], force=True)
    _prepared_folders.update((v, f"0:{folder_gids[v]}" if v in folder_gids else owner) for v in todo)
    _linked_homes.add(home_key)
    return created
