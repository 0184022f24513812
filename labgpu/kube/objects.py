"""Pure builders for a workspace on Kubernetes: limits, GPUs, claims and labels in, manifests out.

Like kubespawner's ``objects.py`` (and our :mod:`labgpu.hub.containers`): no I/O. The spawner
gathers one frozen :class:`PodWorkspace`, calls :func:`make_pod`, :func:`make_home_pvc`,
:func:`make_group_pvc` and :func:`make_gpu_claim`, and hands the dicts to the API server.

What a workspace gets, as on Docker:

- limits = the quota (``resources.limits`` cpu and memory; requests = the guarantee, or the
  limit), a memory-backed ``/dev/shm`` ``emptyDir`` of the quota's ``shm``, the user's home
  as a PersistentVolumeClaim of their own, each group's shared folder as a ReadWriteMany claim
  at ``/shared/<group>``;
- hardening applied last: non-root uid/gid, no privilege escalation, every capability
  dropped, seccomp ``RuntimeDefault``, no service-account token, no service links;
- GPUs in one of three modes. ``dra``: a ``resource.k8s.io/v1`` ResourceClaim whose CEL
  selector names exactly the granted UUIDs (DeviceClass ``gpu.nvidia.com``, MIG devices
  ``mig.nvidia.com``), the pod pinned to the node holding them. ``count``: the device plugin's
  ``nvidia.com/gpu: N`` on the node the ledger chose (the plugin picks which of its GPUs).
  ``simulated``: IDs only (the demo). Zero GPUs: ``NVIDIA_VISIBLE_DEVICES=void``, so an image's
  ``all`` can never expose a node's GPUs;
- the Docker labels of :func:`labgpu.hub.containers.workspace_labels`, verbatim, as
  annotations (a label value may not hold a comma or ``@``), and the same keys as labels with
  values made label-safe (:func:`label_value`), so that ``kubectl -l`` and the poller select by them.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from labgpu.hub.containers import MIN_CPUS, gpu_environment
from labgpu.labels import LABEL_GPUS, LABEL_HUB, LABEL_MANAGED, LABEL_SERVER, LABEL_USER, gpus_value

GPU_MODES = ("dra", "count", "simulated")
GPU_DEVICE_CLASS = "gpu.nvidia.com"  # NVIDIA's DRA driver: whole GPUs
MIG_DEVICE_CLASS = "mig.nvidia.com"  # NVIDIA's DRA driver: MIG devices (their UUIDs start MIG-)
DRA_ATTRIBUTE_DOMAIN = "gpu.nvidia.com"  # the driver's attributes: device.attributes["gpu.nvidia.com"].uuid
DEVICE_PLUGIN_RESOURCE = "nvidia.com/gpu"
NODE_LABEL = "kubernetes.io/hostname"
CONTAINER_NAME = "notebook"  # kubespawner's name: its poll() reads this container's status
CLAIM_REF = "gpus"  # the pod's name for its ResourceClaim
SHARED_ROOT = "/shared"  # as on Docker (labgpu.hub.shared_folders)

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_UUID = re.compile(r"^(GPU|MIG)-[A-Za-z0-9-]+$")


class PodConfigError(ValueError):
    """A workspace that cannot be built as asked (a bad GPU identifier, a mode without a node)."""


def _short_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:8]


def label_value(value: str) -> str:
    """``value`` as a Kubernetes label value (63 characters of ``[A-Za-z0-9-_.]``, alphanumeric at
    both ends): kept when it already is one, else its safe characters and a hash, so that two
    different values never share a label (``bob@lab.org`` -> ``bob-lab.org-1f0c92a4``)."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-_.")[:54].rstrip("-_.")
    return f"{safe}-{_short_hash(value)}" if safe else _short_hash(value)


def dns_name(value: str, limit: int = 63) -> str:
    """``value`` as a DNS label (what names a claim): kept when it already is one, else lowercased,
    other characters as ``-``, and a hash of the original added so two names never collide."""
    if len(value) <= limit and _DNS_LABEL.match(value):
        return value
    safe = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")[: limit - 9].rstrip("-")
    return f"{safe}-{_short_hash(value)}" if safe else f"x-{_short_hash(value)}"


def memory_quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity, in the largest binary unit that holds it exactly
    (``17179869184`` -> ``16Gi``, ``1536Mi``; odd sizes stay in bytes)."""
    for unit, factor in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def cpu_quantity(cpus: float) -> str:
    """CPUs as a Kubernetes quantity: whole CPUs as ``4``, else millicores (``0.5`` -> ``500m``).
    Below 0.01 CPUs (Docker's smallest, so the same floor on both backends) is refused."""
    if not (math.isfinite(cpus) and cpus >= MIN_CPUS):
        raise PodConfigError(f"a CPU limit must be at least {MIN_CPUS} CPUs (got {cpus!r})")
    millis = round(cpus * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


@dataclass(frozen=True)
class PodWorkspace:
    """Everything that decides what a workspace pod (and its claims) looks like."""

    name: str  # the pod's name (kubespawner's pod_name)
    namespace: str
    image: str
    user: str  # JupyterHub user name, for labels
    server: str  # "" for the default server
    hub_id: str
    environment: Mapping[str, str]
    command: list[str] | None = None
    port: int = 8888
    run_as_uid: int = 1000
    run_as_gid: int = 100
    supplemental_groups: tuple[int, ...] = ()  # each group folder's gid (per-user uids)
    shm_size: int = 2 * 1024**3
    mem_limit: int | None = None
    mem_guarantee: int | None = None
    cpu_limit: float | None = None
    cpu_guarantee: float | None = None
    home_claim: str = ""  # the user's home PVC ("" = no persistent home)
    home_mount: str = "/home/jovyan"
    shared_claims: Mapping[str, str] = field(default_factory=dict)  # group -> its RWX PVC
    # GPUs this server was granted by the ledger (UUIDs, or MIG device UUIDs), in its order.
    gpu_uuids: tuple[str, ...] = ()
    gpu_mode: str = "dra"
    gpu_node: str | None = None  # the node holding the granted GPUs
    claim_name: str | None = None  # the ResourceClaim of this spawn (dra mode with GPUs)
    image_pull_policy: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)  # the admin's, e.g. a GPU node pool
    tolerations: tuple[Mapping[str, Any], ...] = ()  # the admin's, e.g. nvidia.com/gpu:NoSchedule
    # KubeSpawner's own labels and annotations (its pod reflector selects by "component"); ours win.
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    extra_annotations: Mapping[str, str] = field(default_factory=dict)


def workspace_annotations(ws: PodWorkspace) -> dict[str, str]:
    """The Docker workspace's labels, exactly (owner, server, hub, the granted GPUs)."""
    return {
        LABEL_MANAGED: "true",
        LABEL_HUB: ws.hub_id,
        LABEL_USER: ws.user,
        LABEL_SERVER: ws.server,
        LABEL_GPUS: gpus_value(ws.gpu_uuids),
    }


def workspace_labels(ws: PodWorkspace) -> dict[str, str]:
    """The same keys as labels, their values label-safe (the GPUs' UUIDs only in the annotation)."""
    return {
        LABEL_MANAGED: "true",
        LABEL_HUB: label_value(ws.hub_id),
        LABEL_USER: label_value(ws.user),
        LABEL_SERVER: label_value(ws.server),
        "app.kubernetes.io/managed-by": "labgpu",
    }


def _checked_uuids(gpu_uuids: tuple[str, ...]) -> tuple[str, ...]:
    bad = [u for u in gpu_uuids if not _UUID.match(u)]
    if bad:
        raise PodConfigError(f"malformed GPU identifiers {bad!r} (expected GPU-… or MIG-… UUIDs)")
    return gpu_uuids


def gpu_selector(gpu_uuids: tuple[str, ...]) -> str:
    """The CEL expression matching exactly these devices by their ``uuid`` attribute."""
    names = ", ".join(f'"{u}"' for u in _checked_uuids(gpu_uuids))
    return f'device.attributes["{DRA_ATTRIBUTE_DOMAIN}"].uuid in [{names}]'


def make_gpu_claim(ws: PodWorkspace) -> dict[str, Any]:
    """The ResourceClaim (``resource.k8s.io/v1``) for exactly the granted GPUs: one request per
    DeviceClass (whole GPUs, MIG devices), each its count and a CEL selector on the UUIDs, so the
    scheduler can only satisfy it with those devices (on the node holding them)."""
    if ws.claim_name is None or not ws.gpu_uuids:
        raise PodConfigError("a GPU claim needs a claim name and granted GPUs")
    whole = tuple(u for u in _checked_uuids(ws.gpu_uuids) if u.startswith("GPU-"))
    mig = tuple(u for u in ws.gpu_uuids if u.startswith("MIG-"))
    requests = [
        {
            "name": request,
            "exactly": {
                "deviceClassName": device_class,
                "allocationMode": "ExactCount",
                "count": len(uuids),
                "selectors": [{"cel": {"expression": gpu_selector(uuids)}}],
            },
        }
        for request, device_class, uuids in (("gpus", GPU_DEVICE_CLASS, whole), ("mig", MIG_DEVICE_CLASS, mig))
        if uuids
    ]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {
            "name": ws.claim_name,
            "namespace": ws.namespace,
            "labels": workspace_labels(ws),
            "annotations": workspace_annotations(ws),
        },
        "spec": {"devices": {"requests": requests}},
    }


def _pvc(
    name: str, namespace: str, access_mode: str, size: int | None, storage_class: str | None, labels: Mapping[str, str]
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": [access_mode],
        "resources": {"requests": {"storage": memory_quantity(size) if size else "10Gi"}},
    }
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": spec,
    }


def make_home_pvc(
    name: str, namespace: str, user: str, hub_id: str, *, size: int | None, storage_class: str | None = None
) -> dict[str, Any]:
    """The user's home: one ReadWriteOnce claim per user, of the quota's ``disk`` (10Gi when the
    policy sets none). On Kubernetes the storage provider holds it: a hard limit, not a soft one."""
    labels = {LABEL_MANAGED: "true", LABEL_HUB: label_value(hub_id), LABEL_USER: label_value(user)}
    return _pvc(name, namespace, "ReadWriteOnce", size, storage_class, labels)


def make_group_pvc(
    name: str, namespace: str, group: str, hub_id: str, *, size: int | None, storage_class: str | None = None
) -> dict[str, Any]:
    """A group's shared folder: one ReadWriteMany claim (NFS, CephFS, ...) of its ``shared_disk``,
    mounted by every member's pods on any node."""
    labels = {LABEL_MANAGED: "true", LABEL_HUB: label_value(hub_id), "org.labgpu.group": label_value(group)}
    return _pvc(name, namespace, "ReadWriteMany", size, storage_class, labels)


def gpu_env(ws: PodWorkspace) -> dict[str, str]:
    """What the workspace is told about its GPUs: on DRA exactly the Docker workspace's (the grant);
    in count mode the device plugin sets ``NVIDIA_VISIBLE_DEVICES`` itself, so only the count."""
    if ws.gpu_mode == "count" and ws.gpu_uuids:
        return {"LABGPU_GPU_COUNT": str(len(ws.gpu_uuids)), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    return gpu_environment(ws.gpu_uuids, "simulated" if ws.gpu_mode == "simulated" else "cdi")


def _resources(ws: PodWorkspace) -> dict[str, Any]:
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if ws.cpu_limit is not None:
        limits["cpu"] = cpu_quantity(ws.cpu_limit)
        requests["cpu"] = cpu_quantity(ws.cpu_guarantee if ws.cpu_guarantee is not None else ws.cpu_limit)
    if ws.mem_limit is not None:
        limits["memory"] = memory_quantity(ws.mem_limit)
        requests["memory"] = memory_quantity(ws.mem_guarantee if ws.mem_guarantee is not None else ws.mem_limit)
    resources: dict[str, Any] = {}
    if ws.gpu_uuids and ws.gpu_mode == "count":
        limits[DEVICE_PLUGIN_RESOURCE] = str(len(ws.gpu_uuids))
    if ws.gpu_uuids and ws.gpu_mode == "dra":
        resources["claims"] = [{"name": CLAIM_REF}]
    if limits:
        resources["limits"] = limits
    if requests:
        resources["requests"] = requests
    return resources


def make_pod(ws: PodWorkspace) -> dict[str, Any]:
    """The workspace pod. Hardening is set last: nothing above it (an environment, the admin's
    node selector or tolerations) can undo it."""
    if ws.gpu_mode not in GPU_MODES:
        raise PodConfigError(f"gpu_mode must be one of {', '.join(GPU_MODES)} (got {ws.gpu_mode!r})")
    if ws.run_as_uid <= 0:
        raise PodConfigError(f"the workspace must run as a non-root uid (got {ws.run_as_uid})")
    if ws.gpu_uuids and ws.gpu_mode != "simulated" and not ws.gpu_node:
        raise PodConfigError("granted GPUs need the node that holds them")
    if ws.gpu_uuids and ws.gpu_mode == "dra" and not ws.claim_name:
        raise PodConfigError("dra mode needs the ResourceClaim's name")
    _checked_uuids(ws.gpu_uuids)

    env = dict(ws.environment)
    env.update(gpu_env(ws))  # what the workspace is told about its GPUs always matches the grant
    mounts = [{"name": "shm", "mountPath": "/dev/shm"}]
    shm = {"medium": "Memory", "sizeLimit": memory_quantity(ws.shm_size)}  # counts against the memory limit
    volumes: list[dict[str, Any]] = [{"name": "shm", "emptyDir": shm}]
    if ws.home_claim:
        mounts.insert(0, {"name": "home", "mountPath": ws.home_mount})
        volumes.insert(0, {"name": "home", "persistentVolumeClaim": {"claimName": ws.home_claim}})
    for group, claim in sorted(ws.shared_claims.items()):
        volume = dns_name(f"shared-{group}")
        mounts.append({"name": volume, "mountPath": f"{SHARED_ROOT}/{group}"})
        volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim}})

    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": ws.image,
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "ports": [{"name": "notebook-port", "containerPort": ws.port}],
        "resources": _resources(ws),
        "volumeMounts": mounts,
    }
    if ws.command:
        container["args"] = list(ws.command)
    if ws.image_pull_policy:
        container["imagePullPolicy"] = ws.image_pull_policy

    spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "restartPolicy": "OnFailure",
    }
    node_selector = dict(ws.node_selector)
    if ws.gpu_uuids and ws.gpu_node and ws.gpu_mode != "simulated":
        # A node selector, not nodeName: the scheduler must still run, to allocate the claim.
        node_selector[NODE_LABEL] = ws.gpu_node
    if node_selector:
        spec["nodeSelector"] = node_selector
    if ws.tolerations:
        spec["tolerations"] = [dict(t) for t in ws.tolerations]
    if ws.gpu_uuids and ws.gpu_mode == "dra":
        spec["resourceClaims"] = [{"name": CLAIM_REF, "resourceClaimName": ws.claim_name}]

    # Hardening, last.
    spec["automountServiceAccountToken"] = False  # the workspace never talks to the API server
    spec["enableServiceLinks"] = False  # no other services' addresses in its environment
    spec["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": ws.run_as_uid,
        "runAsGroup": ws.run_as_gid,
        "fsGroup": ws.run_as_gid,
        # The home's group is set once, not at every start; group folders keep their own gids.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if ws.supplemental_groups:
        spec["securityContext"]["supplementalGroups"] = list(ws.supplemental_groups)
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "runAsNonRoot": True,
        "runAsUser": ws.run_as_uid,
        "runAsGroup": ws.run_as_gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": ws.name,
            "namespace": ws.namespace,
            "labels": {**ws.extra_labels, **workspace_labels(ws)},
            "annotations": {**ws.extra_annotations, **workspace_annotations(ws)},
        },
        "spec": spec,
    }
