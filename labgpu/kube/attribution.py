"""Which user a GPU process belongs to on Kubernetes, for the poller DaemonSet: host PID ->
/proc/PID/cgroup -> the pod's UID -> the pod's ``org.labgpu.*`` annotations -> user and server.

Plugs into :class:`labgpu.services.attribution.ProcessAttributor` (``labgpu poller --labels
kube``) in place of Docker's container ids and labels. The pod's UID stands where the container
id stands on Docker. Only this hub's workspace pods name a user; another pod's process is
recorded as a container, a process outside any pod as the host's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from labgpu.kube.api import list_workspace_pods
from labgpu.kube.placement import pod_uid_from_cgroup as pod_uid_from_cgroup  # the poller's id of a process
from labgpu.labels import LABEL_HUB, LABEL_SERVER, LABEL_USER

PodLister = Callable[[], list[dict[str, object]]]


def pod_label_lookup(
    hub_id: str, namespace: str, node: str | None = None, lister: PodLister | None = None
) -> Callable[[str], Mapping[str, str] | None]:
    """Pod UID -> its labels (the exact values, from its annotations); None for a pod that is
    not this hub's workspace on this node. An unknown UID lists the node's workspace pods once
    more (the attributor caches each answer, so that is once per new pod)."""
    list_pods: PodLister = lister or (lambda: list_workspace_pods(namespace, hub_id, node))
    known: dict[str, dict[str, str]] = {}

    def labels_of(pod_uid: str) -> Mapping[str, str] | None:
        if pod_uid not in known:
            for pod in list_pods():
                metadata = pod.get("metadata") or {}
                if isinstance(metadata, Mapping) and metadata.get("uid"):
                    known[str(metadata["uid"])] = {
                        str(k): str(v) for k, v in (metadata.get("annotations") or {}).items()
                    }
        annotations = known.get(pod_uid)
        if annotations is None:
            return None
        if annotations.get(LABEL_HUB) != hub_id:
            return {k: v for k, v in annotations.items() if k not in (LABEL_USER, LABEL_SERVER)}
        return annotations

    return labels_of
