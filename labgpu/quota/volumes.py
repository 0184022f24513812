"""The hub's volumes: their names (each user's home, each group's shared folder) and their disk
quotas, against the policy's ``disk`` (the home) and ``shared_disk`` (a group's folder).

Names: a home is ``<hub_id>-home-<escaped user>`` (the hub's ``home_volume``), a shared folder
``<hub_id>-group-<name>`` (:func:`group_volume_name`), so that a quota file can reach no other
volume and two hubs on one engine keep theirs apart.

Disk: Docker volumes have no size limit of their own, so a user could fill the Docker disk from
their home and stop every workspace. The sizes are measured beside the hub on a schedule
(:mod:`labgpu.services.disk_usage`); a spawn over a quota is refused with the size, the limit and
where the limit comes from, and the spawn page shows the figures. Between two measurements a
volume can grow past its quota: this is a soft limit (the README says how to make it hard).
Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from labgpu.quota.limits import Limits
from labgpu.units import format_size

VOLUME_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # Docker's rule for volume names


def home_volume_prefix(hub_id: str) -> str:
    """What every home volume of hub ``hub_id`` starts with (jupyterhub_config.py's home_volume)."""
    return f"{hub_id}-home-"


def group_volume_prefix(hub_id: str) -> str:
    """What every shared folder volume of hub ``hub_id`` starts with."""
    return f"{hub_id}-group-"


def group_volume_name(hub_id: str, folder: str) -> str:
    """The Docker volume of the shared folder ``folder``: ``<hub_id>-group-<folder>`` (a name
    already in that namespace is taken as is). Raises ValueError for a name Docker refuses."""
    prefix = group_volume_prefix(hub_id)
    volume = folder if folder.startswith(prefix) else prefix + folder
    if not folder or "/" in folder or not VOLUME_NAME_RE.match(volume):
        raise ValueError(
            f"shared folder {folder!r} makes the Docker volume name {volume!r}, which Docker refuses "
            "(letters, digits, _ . - only)"
        )
    return volume


@dataclass(frozen=True)
class VolumeSize:
    """A volume's size (bytes) as last measured, and when."""

    volume: str
    size: int
    measured_at: datetime


def _source(limits: Limits, name: str) -> str:
    source = limits.sources.get(name)
    return f" (set by {source})" if source else ""


def disk_refusal(limits: Limits, home: VolumeSize | None, folders: Mapping[str, VolumeSize]) -> str | None:
    """Why this user may not start a server now (a volume over its quota), or None.
    ``folders`` maps each of the user's groups with a shared folder to that folder's size."""
    if home is not None and limits.disk is not None and home.size > limits.disk:
        return (
            f"Your home uses {format_size(home.size)} of your {format_size(limits.disk)} disk quota"
            f"{_source(limits, 'disk')}: delete files (from a server of yours that is still running, or ask "
            "the hub's admin), then start again."
        )
    for group, folder in sorted(folders.items()):
        limit = limits.shared_disks.get(group)
        if limit is not None and folder.size > limit:
            return (
                f"The shared folder of your group {group} uses {format_size(folder.size)} of its "
                f"{format_size(limit)} disk quota (set by groups.{group}.shared_disk): its members must delete "
                "files there (from a running server, or ask the hub's admin), then start again."
            )
    return None


def disk_note(limits: Limits, home: VolumeSize | None, folders: Mapping[str, VolumeSize]) -> str:
    """The spawn page's line on disk use (empty when nothing was measured yet)."""
    parts = []
    if home is not None:
        quota = f" of your {format_size(limits.disk)} quota" if limits.disk is not None else ""
        parts.append(f"your home uses {format_size(home.size)}{quota}")
    for group, folder in sorted(folders.items()):
        limit = limits.shared_disks.get(group)
        quota = f" of its {format_size(limit)} quota" if limit is not None else ""
        parts.append(f"the shared folder {group} {format_size(folder.size)}{quota}")
    if not parts:
        return ""
    oldest = min([*([home] if home else []), *folders.values()], key=lambda v: v.measured_at)
    return f"Disk: {'; '.join(parts)} (measured {oldest.measured_at:%Y-%m-%d %H:%M} UTC)."
