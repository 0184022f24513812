"""At every spawn: the user's home and shared folders, as the disk-usage service last measured
them (:mod:`labgpu.services.disk_usage`), against their disk quota. A spawn over it is refused
with HTTP 400 naming the size and the limit (and logged for the admin); the spawn page shows the
figures. Without a ledger, or before a first measurement, nothing is refused."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jupyterhub.spawner import SpawnException

from labgpu.db.disk_store import VolumeSizeStore
from labgpu.hub import resources as hub_resources
from labgpu.quota import Limits
from labgpu.quota.volumes import VolumeSize, disk_note, disk_refusal, group_volume_name

if TYPE_CHECKING:
    from labgpu.hub.gpu_spawn import GpuSpawnPolicy

_stores: dict[str, VolumeSizeStore] = {}


def volume_size_store(ledger_url: str) -> VolumeSizeStore:
    """The one VolumeSizeStore of this process for this ledger (migrated by the ledger)."""
    if ledger_url not in _stores:
        _stores[ledger_url] = VolumeSizeStore(hub_resources.ledger(ledger_url).url, migrate=False)
    return _stores[ledger_url]


async def measured(spawner: GpuSpawnPolicy, limits: Limits) -> tuple[VolumeSize | None, dict[str, VolumeSize]]:
    """The last measured size of the user's home, and of each of their groups' shared folders."""
    if not spawner.ledger_url:
        return None, {}
    home = spawner.home_volume_name()
    folders = {group: group_volume_name(spawner.hub_id, name) for group, name in limits.shared_volumes.items()}
    sizes = await spawner.blocking(volume_size_store(spawner.ledger_url).sizes, [home, *folders.values()])
    return sizes.get(home), {group: sizes[v] for group, v in folders.items() if v in sizes}


async def refuse_over_quota(spawner: GpuSpawnPolicy, limits: Limits) -> None:
    """Raise HTTP 400 if the user's home or one of their shared folders is over its quota."""
    refusal = disk_refusal(limits, *await measured(spawner, limits))
    if refusal is not None:
        spawner.log.warning("Disk quota: refused a start of %s: %s", spawner.server_label, refusal)
        raise SpawnException(refusal, reason="quota", status_code=400)


async def spawn_page_note(spawner: GpuSpawnPolicy, limits: Limits) -> str:
    """The spawn page's line on disk use ("" before a first measurement)."""
    return disk_note(limits, *await measured(spawner, limits))
