"""What each workspace ran on (image digest, driver, CUDA, PyTorch, GPUs), recorded in the
ledger's session table when it starts and closed when it stops, so that results can be
reproduced (``labgpu usage --sessions``).

Blocking (SQLite, NVML): the spawner calls these in its executor. The image's versions come
from the ``org.labgpu.version.*`` labels scripts/build-images.sh writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labgpu.hub import resources as hub_resources
from labgpu.labels import version_label


def open_session(
    ledger_url: str,
    user: str,
    server: str,
    *,
    container_id: str,
    image: str,
    image_info: Mapping[str, Any],
    gpu_uuids: tuple[str, ...],
) -> None:
    """Record that ``user``'s ``server`` now runs ``image`` (``image_info``: Docker's inspect
    of it) in ``container_id`` on these GPUs, with this host's driver."""
    digests = image_info.get("RepoDigests") or []
    labels = (image_info.get("Config") or {}).get("Labels") or {}
    hub_resources.session_store(ledger_url).open(
        user,
        server,
        container_id=container_id,
        image=image,
        image_digest=digests[0] if digests else image_info.get("Id", ""),
        driver_version=hub_resources.host_driver_version(),
        cuda_version=labels.get(version_label("cuda")),
        torch_version=labels.get(version_label("torch")),
        gpu_uuids=gpu_uuids,
    )


def close_session(ledger_url: str, user: str, server: str, reason: str) -> None:
    """Record that the session of ``user``'s ``server`` ended, and why."""
    hub_resources.session_store(ledger_url).end(user, server, reason)
