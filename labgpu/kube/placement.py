"""Where GPUs are in a cluster, and whose pod a GPU process is in. Pure: API objects in, answers out.

- The node holding each GPU: from the ResourceSlices NVIDIA's DRA driver publishes (one per
  node, each device with its ``uuid`` attribute), or, in device-plugin mode where nothing
  publishes UUIDs, from the admin's map ``{node: [uuid, ...]}``. A pod runs on one node, so a
  grant must lie on one: :func:`node_of_grant` says which, or why not.
- The pod of a GPU process: the poller (a DaemonSet with the host's PID namespace) reads
  ``/proc/PID/cgroup``; :func:`pod_uid_from_cgroup` finds the pod's UID in it (cgroup v1 and
  v2, cgroupfs and systemd drivers), and the pod's ``org.labgpu.*`` labels name the user.
- In device-plugin mode the plugin, not the ledger, picks which of a node's GPUs a pod gets:
  :func:`count_mode_mismatches` compares what the poller saw each pod use with the ledger's grant.
- The cluster's GPUs for the ledger: :func:`cluster_inventory` reads them from the ResourceSlices;
  :func:`group_by_node` makes each node's GPUs one PCIe group for the allocator, whose "pack"
  then keeps a multi-GPU request on one node whenever one node has enough free.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from labgpu.gpus.inventory import Gpu, MigDevice
from labgpu.gpus.reconcile import ContainerClaim
from labgpu.kube.objects import DRA_ATTRIBUTE_DOMAIN
from labgpu.units import parse_size


class PlacementError(ValueError):
    """A grant on GPUs that no node of the cluster reports (a configuration problem)."""


class GrantSpansNodes(PlacementError):
    """A grant whose GPUs are on more than one node (no node had enough free GPUs together)."""


def _attribute(device: Mapping[str, Any], name: str) -> str | None:
    """A device attribute's string value; ResourceSlices may qualify the name with the driver's domain."""
    attributes = device.get("attributes") or {}
    value = attributes.get(name) or attributes.get(f"{DRA_ATTRIBUTE_DOMAIN}/{name}") or {}
    text = value.get("string") if isinstance(value, Mapping) else None
    return str(text) if text else None


def gpu_nodes_from_slices(slices: Iterable[Mapping[str, Any]], driver: str = DRA_ATTRIBUTE_DOMAIN) -> dict[str, str]:
    """``{uuid: node}`` for every device of ``driver`` in these ResourceSlices (``resource.k8s.io/v1``)."""
    nodes: dict[str, str] = {}
    for item in slices:
        spec = item.get("spec") or {}
        node = spec.get("nodeName")
        if spec.get("driver") != driver or not node:
            continue
        for device in spec.get("devices") or []:
            uuid = _attribute(device, "uuid")
            if uuid:
                nodes[uuid] = str(node)
    return nodes


def _capacity(device: Mapping[str, Any], name: str) -> int:
    """A device capacity (a quantity such as ``81559Mi``) in bytes; 0 when absent or unreadable."""
    value = ((device.get("capacity") or {}).get(name) or {}).get("value")
    try:
        return parse_size(str(value)) if value is not None else 0
    except ValueError:
        return 0


def _index(device: Mapping[str, Any]) -> int:
    """The GPU's minor number from the driver's device name (``gpu-3``, ``gpu-3-mig-…``)."""
    match = re.match(r"gpu-(\d+)", str(device.get("name", "")))
    return int(match.group(1)) if match else 0


def cluster_inventory(slices: Iterable[Mapping[str, Any]], driver: str = DRA_ATTRIBUTE_DOMAIN) -> list[Gpu]:
    """Every GPU the DRA driver publishes, as the ledger's inventory: whole GPUs (``type: gpu``)
    and GPUs in MIG mode with their MIG devices (``type: mig``, grouped by ``parentUUID``), each
    node's GPUs one group (:func:`group_by_node`)."""
    whole: dict[str, Gpu] = {}
    migs: dict[str, list[tuple[Mapping[str, Any], str]]] = {}
    nodes: dict[str, str] = {}
    for item in slices:
        spec = item.get("spec") or {}
        node = str(spec.get("nodeName") or "")
        if spec.get("driver") != driver or not node:
            continue
        for device in spec.get("devices") or []:
            uuid, kind = _attribute(device, "uuid"), _attribute(device, "type")
            if not uuid:
                continue
            if kind == "mig":
                parent = _attribute(device, "parentUUID") or ""
                migs.setdefault(parent, []).append((device, uuid))
                nodes.setdefault(parent, node)
            else:
                nodes[uuid] = node
                whole[uuid] = Gpu(
                    uuid=uuid,
                    index=_index(device),
                    model=_attribute(device, "productName") or "",
                    memory_total=_capacity(device, "memory"),
                    pci_bus_id=_attribute(device, "pcieBusID") or "",
                )
    for parent, devices in migs.items():
        first = devices[0][0]
        base = whole.get(parent) or Gpu(
            uuid=parent, index=_index(first), model=_attribute(first, "productName") or "", memory_total=0
        )
        mig_devices = tuple(
            MigDevice(uuid=uuid, index=i, memory_total=_capacity(d, "memory"), name=_attribute(d, "profile") or "")
            for i, (d, uuid) in enumerate(sorted(devices, key=lambda pair: str(pair[0].get("name", ""))))
        )
        whole[parent] = replace(base, mig_enabled=True, mig_devices=mig_devices)
    return group_by_node(sorted(whole.values(), key=lambda g: (nodes[g.uuid], g.index)), nodes)


def group_by_node(gpus: Sequence[Gpu], nodes: Mapping[str, str]) -> list[Gpu]:
    """The GPUs with each one's node as its PCIe group (``switch_group = "node:<name>"``): the
    allocator places a request in the tightest group that fits, so a grant lands on one node
    whenever one node has enough free GPUs (the pod must run on one node)."""
    return [replace(g, switch_group=f"node:{nodes[g.uuid]}") if g.uuid in nodes else g for g in gpus]


def gpu_nodes_from_map(node_gpus: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """``{uuid: node}`` from the admin's ``{node: [uuid, ...]}``; a GPU listed under two nodes is refused."""
    nodes: dict[str, str] = {}
    for node, uuids in node_gpus.items():
        for uuid in uuids:
            if uuid in nodes and nodes[uuid] != node:
                raise PlacementError(f"GPU {uuid} is listed under two nodes, {nodes[uuid]} and {node}")
            nodes[uuid] = node
    return nodes


def node_of_grant(gpu_uuids: Sequence[str], nodes: Mapping[str, str]) -> str:
    """The one node holding all of ``gpu_uuids``, or PlacementError saying what is wrong."""
    unknown = [u for u in gpu_uuids if u not in nodes]
    if unknown:
        raise PlacementError(
            f"no node of the cluster reports GPU(s) {', '.join(unknown)} (is NVIDIA's DRA driver running on "
            "every GPU node, or, in device-plugin mode, is each node's GPU list configured?)"
        )
    by_node: dict[str, list[str]] = {}
    for uuid in gpu_uuids:
        by_node.setdefault(nodes[uuid], []).append(uuid)
    if len(by_node) > 1:
        where = "; ".join(f"{node}: {', '.join(uuids)}" for node, uuids in sorted(by_node.items()))
        raise GrantSpansNodes(f"the granted GPUs are on {len(by_node)} nodes ({where}); a pod runs on one node")
    if not by_node:
        raise PlacementError("no GPUs granted")
    return next(iter(by_node))


# cgroup v1 (cgroupfs): /kubepods/burstable/pod1b2c…-…/<container>; v2 or the systemd driver:
# /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c…_…_….slice/cri-containerd-<id>.scope
_POD_UID = re.compile(
    r"(?:/pod|-pod)([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?(?=/|$)"
)


def pod_uid_from_cgroup(cgroup_text: str) -> str | None:
    """The UID of the pod a process is in, from its /proc/PID/cgroup (None: not in a pod)."""
    match = _POD_UID.search(cgroup_text)
    return match.group(1).replace("_", "-") if match else None


def count_mode_mismatches(
    granted: Mapping[tuple[str, str], Sequence[str]], used: Mapping[tuple[str, str], Iterable[str]]
) -> list[str]:
    """In device-plugin mode: servers whose processes use GPUs other than the ledger granted them
    (the plugin chose others), one line each, for the poller's log and the admin. ``granted`` and
    ``used`` are keyed by (user, server); ``used`` holds the UUIDs the poller saw their processes on."""
    lines = []
    for key, uuids in sorted(used.items()):
        extra = sorted(set(uuids) - set(granted.get(key, ())))
        if extra:
            user, server = key
            name = f"{user}/{server}" if server else user
            lines.append(
                f"{name} uses {', '.join(extra)}, not granted to it by the ledger "
                f"(granted: {', '.join(granted.get(key, ())) or 'none'})"
            )
    return lines


# A pod's phase as the Docker state reconcile reads: a Pending pod may be pulling its image (its
# GPUs are taken), a Running one runs; Succeeded and Failed pods run nothing.
_PHASE_STATE = {"Pending": "running", "Running": "running", "Succeeded": "exited", "Failed": "exited"}


def pod_claims(pods: Iterable[Mapping[str, Any]]) -> list[ContainerClaim]:
    """This hub's workspace pods as :func:`labgpu.gpus.reconcile.reconcile` reads containers: the
    exact ``org.labgpu.*`` values from their annotations, the pod's name as its id."""
    claims = []
    for pod in pods:
        metadata = pod.get("metadata") or {}
        phase = str((pod.get("status") or {}).get("phase") or "Unknown")
        created = metadata.get("creationTimestamp") or metadata.get("creation_timestamp") or ""
        claim = ContainerClaim.from_docker(
            {
                "id": str(metadata.get("name", "")),
                "state": _PHASE_STATE.get(phase, "unknown"),
                "created": str(created),
                "labels": dict(metadata.get("annotations") or {}),
            }
        )
        claims.append(claim)
    return claims
