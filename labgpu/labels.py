"""The ``org.labgpu.*`` labels: the one vocabulary our containers, volumes, networks and images carry.

The spawner writes these labels, and the hub (reconciling its ledger after a crash), the poller
(attributing GPU processes to users), ``labgpu gpus`` and the tests read them back; defining the keys
once here keeps writers and readers agreeing. Also the one spelling of a server's name for people
(``alice`` or ``alice/lab2``). Pure: imports nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

LABEL_PREFIX = "org.labgpu."

LABEL_MANAGED = LABEL_PREFIX + "managed"  # "true" on everything LabGPU created (containers, volumes, networks)
LABEL_HUB = LABEL_PREFIX + "hub"  # the hub id (``LABGPU_HUB_ID``) a workspace container belongs to
LABEL_USER = LABEL_PREFIX + "user"  # the JupyterHub user name of a workspace
LABEL_SERVER = LABEL_PREFIX + "server"  # the named server ("" for the default server)
LABEL_GPUS = LABEL_PREFIX + "gpus"  # the GPU (or MIG device) UUIDs a workspace was granted, comma-separated
LABEL_KIND = LABEL_PREFIX + "kind"  # what a managed volume is for, e.g. KIND_GROUP_SHARE

# Workspace image labels (written by scripts/build-images.sh): what the image was built from.
LABEL_VERSION_PREFIX = LABEL_PREFIX + "version."  # org.labgpu.version.cuda, .torch, .jupyterhub, ...
LABEL_BASE_IMAGE = LABEL_PREFIX + "base-image"

KIND_GROUP_SHARE = "group-share"  # a lab group's shared folder volume


def version_label(component: str) -> str:
    """The image label holding a component's version: ``version_label("cuda")`` is ``org.labgpu.version.cuda``."""
    return LABEL_VERSION_PREFIX + component


def server_label(user: str, server: str = "") -> str:
    """How people name a server: ``alice`` for the default server, ``alice/lab2`` for a named one."""
    return f"{user}/{server}" if server else user


def gpus_value(gpu_uuids: Iterable[str]) -> str:
    """The value of the ``org.labgpu.gpus`` label for these GPUs (empty: no GPUs)."""
    return ",".join(gpu_uuids)


def parse_gpus(value: object) -> tuple[str, ...]:
    """The GPU UUIDs an ``org.labgpu.gpus`` label names (missing or empty: none)."""
    return tuple(u.strip() for u in str(value or "").split(",") if u.strip())


def hub_filter(hub_id: str) -> str:
    """Docker's ``label`` filter selecting this hub's containers."""
    return f"{LABEL_HUB}={hub_id}"


def managed_labels(kind: str = "") -> dict[str, str]:
    """Labels marking a Docker object LabGPU created (and, for volumes, what it is for)."""
    return {LABEL_MANAGED: "true", LABEL_KIND: kind} if kind else {LABEL_MANAGED: "true"}


# What the spawn page shows of an image, in this order: (label component, how people write it).
IMAGE_VERSION_FIELDS = (
    ("torch", "PyTorch"),
    ("cuda", "CUDA"),
    ("cudnn", "cuDNN"),
    ("nccl", "NCCL"),
    ("python", "Python"),
    ("jupyterlab", "JupyterLab"),
)


def _cudnn_text(value: str) -> str:
    """torch reports cuDNN as one number: 90100 is 9.1.0 (cuDNN 9+), 8907 is 8.9.7."""
    if not value.isdigit():
        return value
    number = int(value)
    major, rest = (number // 10000, number % 10000) if number >= 10000 else (number // 1000, number % 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def image_versions_text(labels: Mapping[str, str]) -> str:
    """The versions an image's ``org.labgpu.version.*`` labels name, e.g. ``PyTorch 2.7.1,
    CUDA 12.6, cuDNN 9.5.1, NCCL 2.21.5, Python 3.11.2, JupyterLab 4.6.6`` ("" when none)."""
    parts = []
    for component, name in IMAGE_VERSION_FIELDS:
        value = labels.get(version_label(component), "")
        if value and value != "none":
            parts.append(f"{name} {_cudnn_text(value) if component == 'cudnn' else value}")
    return ", ".join(parts)
