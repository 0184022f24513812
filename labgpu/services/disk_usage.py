"""Disk usage: a small loop, run as a JupyterHub managed service (`labgpu disk --measure`), that
measures this hub's volumes (every home and every group's shared folder) and records their
sizes in the ledger's database, where the hub reads them at every spawn
(:func:`labgpu.quota.volumes.disk_refusal`) and on the spawn page.

Measuring: Docker's own accounting (``GET /system/df``, what ``docker system df -v`` shows),
which needs no access to the host's /var/lib/docker. Docker walks each volume's files for it, so
the cost grows with the number of files; on this project's test engine a round takes ~15 ms
(a first call after a start of the engine ~20 s, while it sizes the images too), hence a round
every few minutes (``--interval``, 10m by default), not on every spawn.

Warning the admin: every round logs a warning (in the hub's log: managed services write there)
for each volume over its quota, resolved with the groups the hub puts the user in (the Hub
REST API, as the reclaimer does) and the policy's member lists.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from escapism import unescape

from labgpu.db.disk_store import VolumeSizeStore
from labgpu.quota import Policy, resolve
from labgpu.quota.volumes import (
    VolumeSize,
    disk_refusal,
    group_volume_name,
    group_volume_prefix,
    home_volume_prefix,
)
from labgpu.services.reclaimer import GroupsOf, no_hub_groups
from labgpu.units import format_size

log = logging.getLogger("labgpu.disk")


def measure_volumes(docker_client: Any, hub_id: str) -> dict[str, int]:
    """``{volume: bytes}`` of hub ``hub_id``'s homes and shared folders, from Docker's ``df``
    (volumes Docker could not size are left out)."""
    prefixes = (home_volume_prefix(hub_id), group_volume_prefix(hub_id))
    sizes = {}
    for volume in docker_client.api.df().get("Volumes") or []:
        name = str(volume.get("Name") or "")
        size = (volume.get("UsageData") or {}).get("Size", -1)
        if name.startswith(prefixes) and isinstance(size, int) and size >= 0:
            sizes[name] = size
    return sizes


def home_owner(volume: str, hub_id: str) -> str | None:
    """The user whose home ``volume`` is (DockerSpawner escapes names: ``a-2eb`` is ``a.b``)."""
    prefix = home_volume_prefix(hub_id)
    return unescape(volume[len(prefix) :], escape_char="-") if volume.startswith(prefix) else None


def over_quota(
    sizes: Mapping[str, VolumeSize], policy: Policy, hub_id: str, groups_of: GroupsOf = no_hub_groups
) -> list[str]:
    """A line for the admin for each home and shared folder over its quota."""
    warnings = []
    for volume, size in sorted(sizes.items()):
        user = home_owner(volume, hub_id)
        if user is None:
            continue
        limits = resolve(policy, user, groups_of(user))
        refusal = disk_refusal(limits, size, {})
        if refusal is not None:
            warnings.append(f"{user}'s home {volume} is over quota; their next spawn is refused: {refusal}")
    for group, spec in sorted(policy.spec.groups.items()):
        if spec.shared_volume is False or spec.shared_disk is None:
            continue
        volume = group_volume_name(hub_id, group if spec.shared_volume is True else str(spec.shared_volume))
        folder = sizes.get(volume)
        if folder is not None and folder.size > spec.shared_disk:
            warnings.append(
                f"group {group}'s shared folder {volume} uses {format_size(folder.size)}, over its shared_disk of "
                f"{format_size(spec.shared_disk)}: its members' spawns are refused until they delete files there"
            )
    return warnings


def measure_round(
    store: VolumeSizeStore,
    docker_client: Any,
    hub_id: str,
    policy: Policy | None,
    groups_of: GroupsOf = no_hub_groups,
) -> dict[str, VolumeSize]:
    """Measure, record, warn. Returns what was recorded."""
    started = time.monotonic()
    sizes = measure_volumes(docker_client, hub_id)
    store.record(sizes, (home_volume_prefix(hub_id), group_volume_prefix(hub_id)))
    recorded = store.sizes(sizes)
    log.info("Measured %d volume(s) of hub %s in %.2f s", len(sizes), hub_id, time.monotonic() - started)
    if policy is not None:
        for line in over_quota(recorded, policy, hub_id, groups_of):
            log.warning("Disk quota: %s", line)
    return recorded


def run_forever(
    store: VolumeSizeStore,
    docker_client: Any,
    hub_id: str,
    policy: Callable[[], Policy | None],
    interval: float,
    *,
    groups_of: GroupsOf = no_hub_groups,
    once: bool = False,
) -> None:
    """A round every ``interval`` seconds; a failed round is logged and the next one tries again."""
    while True:
        try:
            measure_round(store, docker_client, hub_id, policy(), groups_of)
        except Exception as e:  # Docker or the database away for a while: keep the service up
            log.error("Could not measure the volumes of hub %s: %s", hub_id, e)
        if once:
            return
        time.sleep(interval)
