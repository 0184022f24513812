"""Where a grant's GPUs are in a cluster, the cluster's GPUs for the ledger, which pod a GPU
process is in, and the hub's start-up on Kubernetes (its API calls replaced by recorded answers)."""

from __future__ import annotations

import re

import pytest

from labgpu.gpus.allocator import choose_gpus
from labgpu.hub import resources as hub_resources
from labgpu.kube import startup
from labgpu.kube.attribution import pod_label_lookup
from labgpu.kube.placement import (
    PlacementError,
    cluster_inventory,
    count_mode_mismatches,
    gpu_nodes_from_map,
    gpu_nodes_from_slices,
    node_of_grant,
    pod_claims,
    pod_uid_from_cgroup,
)
from labgpu.services.attribution import ProcessAttributor
from tests.unit.test_kube_spawner import resource_slice

A = [f"GPU-a{i}000000-0000-0000-0000-000000000000" for i in range(4)]
B = [f"GPU-b{i}000000-0000-0000-0000-000000000000" for i in range(4)]
SLICES = [resource_slice("node-a", A), resource_slice("node-b", B)]


def test_the_node_of_each_gpu_comes_from_the_dra_drivers_resource_slices():
    nodes = gpu_nodes_from_slices([*SLICES, resource_slice("node-c", ["GPU-x"], driver="other.example.com")])
    assert nodes == {**dict.fromkeys(A, "node-a"), **dict.fromkeys(B, "node-b")}
    assert node_of_grant(B[1:3], nodes) == "node-b"


def test_a_grant_across_nodes_or_on_an_unknown_gpu_says_what_is_wrong():
    nodes = gpu_nodes_from_slices(SLICES)
    with pytest.raises(
        PlacementError, match=re.escape(f"the granted GPUs are on 2 nodes (node-a: {A[0]}; node-b: {B[0]})")
    ):
        node_of_grant([A[0], B[0]], nodes)
    with pytest.raises(PlacementError, match="no node of the cluster reports GPU\\(s\\) GPU-zz"):
        node_of_grant(["GPU-zz"], nodes)


def test_the_admins_node_map_may_not_list_a_gpu_twice():
    assert gpu_nodes_from_map({"n1": ["GPU-1"], "n2": ["GPU-2"]}) == {"GPU-1": "n1", "GPU-2": "n2"}
    with pytest.raises(PlacementError, match="GPU GPU-1 is listed under two nodes, n1 and n2"):
        gpu_nodes_from_map({"n1": ["GPU-1"], "n2": ["GPU-1"]})


def test_the_cluster_inventory_groups_each_nodes_gpus_so_a_grant_stays_on_one_node():
    gpus = cluster_inventory(SLICES)
    assert [g.uuid for g in gpus] == A + B
    assert {g.switch_group for g in gpus} == {"node:node-a", "node:node-b"}
    assert (gpus[0].model, gpus[0].memory_total, gpus[0].index) == ("NVIDIA A100-SXM4-80GB", 80 * 1024**3, 0)
    # Two GPUs of node-a are taken: a request for 3 goes to node-b, not across nodes.
    free = [g for g in gpus if g.uuid not in A[:2]]
    chosen = choose_gpus(free, 3)
    assert {g.uuid for g in chosen} <= set(B)


def test_mig_devices_are_listed_under_their_parent_gpu():
    slice_ = resource_slice("node-a", [A[0]])
    slice_["spec"]["devices"].append(
        {
            "name": "gpu-1-mig-9-4-4",
            "attributes": {
                "type": {"string": "mig"},
                "uuid": {"string": "MIG-1111"},
                "parentUUID": {"string": A[1]},
                "profile": {"string": "3g.40gb"},
                "productName": {"string": "NVIDIA A100-SXM4-80GB"},
            },
            "capacity": {"memory": {"value": "40Gi"}},
        }
    )
    (whole, parent) = cluster_inventory([slice_])
    assert (whole.uuid, whole.mig_enabled) == (A[0], False)
    assert (parent.uuid, parent.mig_enabled, parent.index) == (A[1], True, 1)
    assert [(m.uuid, m.name, m.memory_total) for m in parent.mig_devices] == [("MIG-1111", "3g.40gb", 40 * 1024**3)]


@pytest.mark.parametrize(
    ("cgroup", "uid"),
    [
        (  # cgroup v2, systemd driver, containerd
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_4a1b_9c2d_3e4f5a6b7c8d.slice/"
            "cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope\n",
            "1b2c3d4e-5f60-4a1b-9c2d-3e4f5a6b7c8d",
        ),
        (  # cgroup v1, cgroupfs driver
            "12:memory:/kubepods/besteffort/pod1b2c3d4e-5f60-4a1b-9c2d-3e4f5a6b7c8d/0123abcd\n",
            "1b2c3d4e-5f60-4a1b-9c2d-3e4f5a6b7c8d",
        ),
        ("0::/system.slice/docker-" + "a" * 64 + ".scope\n", None),  # a Docker container, not a pod
        ("0::/user.slice/user-1000.slice/session-3.scope\n", None),  # the host
    ],
)
def test_the_pod_of_a_process_is_read_from_its_cgroup(cgroup, uid):
    assert pod_uid_from_cgroup(cgroup) == uid


def test_the_poller_names_the_user_of_a_process_in_a_workspace_pod(tmp_path):
    uid = "1b2c3d4e-5f60-4a1b-9c2d-3e4f5a6b7c8d"
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "cgroup").write_text(f"0::/kubepods.slice/kubepods-pod{uid.replace('-', '_')}.slice/x.scope\n")
    pods = [
        {
            "metadata": {
                "uid": uid,
                "annotations": {
                    "org.labgpu.hub": "lab-k8s",
                    "org.labgpu.user": "bob@lab.org",
                    "org.labgpu.server": "big",
                },
            }
        }
    ]
    listed = []
    lookup = pod_label_lookup("lab-k8s", "lab", "node-a", lister=lambda: listed.append(1) or pods)
    attributor = ProcessAttributor(lookup, tmp_path, id_from_cgroup=pod_uid_from_cgroup)
    owner = attributor.owner_of(4242)
    assert (owner.kind, owner.user, owner.server, owner.container_id) == ("workspace", "bob@lab.org", "big", uid)
    assert attributor.owner_of(4242) == owner and listed == [1]  # cached: the API is asked once per pod
    other_hub = pod_label_lookup("another-hub", "lab", lister=lambda: pods)
    assert "org.labgpu.user" not in other_hub(uid)  # another hub's pod names no user of ours


def test_count_mode_reports_a_pod_using_gpus_the_ledger_did_not_grant_it():
    granted = {("alice", ""): [A[0], A[1]], ("bob", "x"): [A[2]]}
    used = {("alice", ""): [A[0], A[1]], ("bob", "x"): [A[3]]}
    assert count_mode_mismatches(granted, used) == [
        f"bob/x uses {A[3]}, not granted to it by the ledger (granted: {A[2]})"
    ]


def test_pods_are_reconciled_like_containers_from_their_annotations():
    pods = [
        {
            "metadata": {
                "name": "jupyter-alice",
                "creationTimestamp": "2026-12-03T10:00:00Z",
                "annotations": {
                    "org.labgpu.hub": "h",
                    "org.labgpu.user": "alice",
                    "org.labgpu.server": "",
                    "org.labgpu.gpus": A[0],
                },
            },
            "status": {"phase": "Running"},
        },
        {"metadata": {"name": "jupyter-bob", "annotations": {"org.labgpu.user": "bob"}}, "status": {"phase": "Failed"}},
    ]
    alice, bob = pod_claims(pods)
    assert (alice.container_id, alice.user, alice.gpu_uuids, alice.state, alice.hub) == (
        "jupyter-alice",
        "alice",
        (A[0],),
        "running",
        "h",
    )
    assert bob.state == "exited"


def test_hub_start_records_the_clusters_gpus_and_releases_those_of_vanished_pods(tmp_path, monkeypatch):
    ledger_url = str(tmp_path / "ledger.sqlite")
    deleted = []
    pods = [
        {
            "metadata": {
                "name": "jupyter-alice",
                "annotations": {
                    "org.labgpu.hub": "h",
                    "org.labgpu.user": "alice",
                    "org.labgpu.server": "",
                    "org.labgpu.gpus": A[0],
                },
            },
            "status": {"phase": "Running"},
        }
    ]
    monkeypatch.setattr(startup, "list_resource_slices", lambda driver: SLICES)
    monkeypatch.setattr(startup, "list_workspace_pods", lambda namespace, hub_id: pods)
    monkeypatch.setattr(startup, "delete_pod", lambda namespace, name: deleted.append(name))
    try:
        ledger = hub_resources.ledger(ledger_url)
        ledger.sync_inventory(cluster_inventory(SLICES))
        ledger.allocate("carol", "", 1)  # her pod is gone
        report = startup.prepare_cluster_hub(quota_files=[], ledger_url=ledger_url, hub_id="h", namespace="lab")
        assert report.gpus == 8
        assert {a.user: a.gpu_uuids for a in ledger.allocations()} == {"alice": (A[0],)}  # adopted; carol's released
        assert deleted == []
    finally:
        hub_resources._ledgers.pop(ledger_url, None)
