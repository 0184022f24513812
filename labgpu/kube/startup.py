"""Hub start-up on Kubernetes, what :func:`labgpu.hub.resources.prepare_hub` is on Docker.

Called once from Zero-to-JupyterHub's ``hub.extraConfig`` (deploy/kubernetes/values.yaml):
the quota files must load (else the hub refuses to start, saying why), the ledger gets the
cluster's GPUs (from the DRA driver's ResourceSlices, or in device-plugin mode from a static
inventory and the node map), and the ledger is reconciled with this hub's workspace pods (a
pod that runs keeps its GPUs, GPUs of a pod that is gone go back).

Runs while JupyterHub loads its configuration, inside the hub's event loop: the API calls
(:mod:`labgpu.kube.api`) run in a thread with a loop of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from labgpu.db.ledger import ReconcileResult
from labgpu.gpus.reconcile import ReconcilePlan, reconcile
from labgpu.hub import resources as hub_resources
from labgpu.kube.api import delete_pod, list_resource_slices, list_workspace_pods
from labgpu.kube.objects import DRA_ATTRIBUTE_DOMAIN
from labgpu.kube.placement import cluster_inventory, gpu_nodes_from_map, group_by_node, pod_claims

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterStartup:
    gpus: int
    plan: ReconcilePlan
    result: ReconcileResult | None


def prepare_cluster_hub(
    *,
    quota_files: Sequence[str],
    ledger_url: str,
    hub_id: str,
    namespace: str,
    gpu_mode: str = "dra",
    dra_driver: str = DRA_ATTRIBUTE_DOMAIN,
    gpu_source: str = "none",
    gpu_node_map: Mapping[str, Sequence[str]] | None = None,
) -> ClusterStartup:
    """Load the policy, record the cluster's GPUs in the ledger, reconcile it with the pods.
    Raises PolicyError or InventoryError (the hub refuses to start and says why)."""
    if quota_files:
        hub_resources.policy_store(quota_files)
    the_ledger = hub_resources.ledger(ledger_url)
    the_ledger.hub_id = hub_id  # recorded with its grants, for reconcile with several hubs
    if gpu_mode == "dra":
        gpus = cluster_inventory(list_resource_slices(dra_driver), dra_driver)
    elif gpu_mode == "count":
        gpus = group_by_node(hub_resources.read_inventory(gpu_source), gpu_nodes_from_map(gpu_node_map or {}))
    else:
        gpus = hub_resources.read_inventory(gpu_source)
    the_ledger.sync_inventory(gpus)
    known = {h.gpu.uuid for h in the_ledger.holdings()}
    pods = pod_claims(list_workspace_pods(namespace, hub_id))
    plan = reconcile(the_ledger.allocations(hub_id=hub_id), pods, hub_id=hub_id, known_gpus=known)
    for line in plan.conflicts:
        log.warning("Ledger/pod conflict: %s", line)
    result = the_ledger.apply_reconcile(plan) if not plan.empty else None
    for stop in plan.stops:
        try:
            delete_pod(namespace, stop.container_id)
        except Exception as e:  # gone meanwhile: nothing to stop
            log.warning("Could not delete pod %s (%s): %s", stop.container_id, stop.reason, e)
    log.info("LabGPU on Kubernetes: %d GPUs (%s mode) in the ledger", len(gpus), gpu_mode)
    return ClusterStartup(len(gpus), plan, result)
