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
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from labgpu.kube.objects import DRA_ATTRIBUTE_DOMAIN


class PlacementError(ValueError):
    """A grant that no single node holds (or that is on no node the cluster reports)."""


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
        raise PlacementError(f"the granted GPUs are on {len(by_node)} nodes ({where}); a pod runs on one node")
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
