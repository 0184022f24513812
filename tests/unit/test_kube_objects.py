"""The workspace pod, its claims and its GPU ResourceClaim, compared whole, in kubespawner's
test_objects.py style: a CPU-only server, 1 and 4 exact GPUs (DRA), a device-plugin count, MIG.

A whole-object comparison is the point: a field added, dropped or changed in any manifest
fails here, and the expected dict reads as the pod a lab would see with ``kubectl get -o yaml``.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labgpu.kube.objects import (
    PodConfigError,
    PodWorkspace,
    cpu_quantity,
    dns_name,
    gpu_selector,
    label_value,
    make_gpu_claim,
    make_group_pvc,
    make_home_pvc,
    make_pod,
    memory_quantity,
)

G = 1024**3
GPUS = (
    "GPU-0a1b2c3d-0000-1111-2222-333344445555",
    "GPU-1a1b2c3d-0000-1111-2222-333344445555",
    "GPU-2a1b2c3d-0000-1111-2222-333344445555",
    "GPU-3a1b2c3d-0000-1111-2222-333344445555",
)
MIG = "MIG-9f8e7d6c-0000-1111-2222-333344445555"


def workspace(**changes) -> PodWorkspace:
    base = PodWorkspace(
        name="jupyter-alice",
        namespace="lab",
        image="lab/pytorch:2",
        user="alice",
        server="",
        hub_id="lab-a",
        environment={"JUPYTERHUB_USER": "alice"},
        command=["jupyterhub-singleuser"],
        cpu_limit=4,
        mem_limit=16 * G,
        shm_size=2 * G,
        home_claim="labgpu-home-alice",
    )
    return replace(base, **changes)


SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "privileged": False,
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 100,
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 100,
    "fsGroup": 100,
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
LABELS = {
    "org.labgpu.managed": "true",
    "org.labgpu.hub": "lab-a",
    "org.labgpu.user": "alice",
    "org.labgpu.server": "",
    "app.kubernetes.io/managed-by": "labgpu",
}
VOLUMES = [
    {"name": "home", "persistentVolumeClaim": {"claimName": "labgpu-home-alice"}},
    {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
]
MOUNTS = [{"name": "home", "mountPath": "/home/jovyan"}, {"name": "shm", "mountPath": "/dev/shm"}]


def expected_pod(*, env, resources, annotations_gpus="", spec_extra=None):
    spec = {
        "containers": [
            {
                "name": "notebook",
                "image": "lab/pytorch:2",
                "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
                "ports": [{"name": "notebook-port", "containerPort": 8888}],
                "resources": resources,
                "volumeMounts": MOUNTS,
                "args": ["jupyterhub-singleuser"],
                "securityContext": SECURITY,
            }
        ],
        "volumes": VOLUMES,
        "restartPolicy": "OnFailure",
        **(spec_extra or {}),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": POD_SECURITY,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "jupyter-alice",
            "namespace": "lab",
            "labels": LABELS,
            "annotations": {
                "org.labgpu.managed": "true",
                "org.labgpu.hub": "lab-a",
                "org.labgpu.user": "alice",
                "org.labgpu.server": "",
                "org.labgpu.gpus": annotations_gpus,
            },
        },
        "spec": spec,
    }


def test_a_cpu_only_workspace_is_a_hardened_pod_limited_to_its_quota_with_no_gpu_visible():
    assert make_pod(workspace()) == expected_pod(
        env={"JUPYTERHUB_USER": "alice", "LABGPU_GPUS": "", "NVIDIA_VISIBLE_DEVICES": "void"},
        resources={"limits": {"cpu": "4", "memory": "16Gi"}, "requests": {"cpu": "4", "memory": "16Gi"}},
    )


def test_one_exact_gpu_is_a_claim_on_its_uuid_and_the_pod_is_pinned_to_its_node():
    ws = workspace(gpu_uuids=GPUS[:1], gpu_node="gpu-node-2", claim_name="jupyter-alice-gpus")
    assert make_pod(ws) == expected_pod(
        env={
            "JUPYTERHUB_USER": "alice",
            "LABGPU_GPUS": GPUS[0],
            "NVIDIA_VISIBLE_DEVICES": GPUS[0],
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        },
        resources={
            "claims": [{"name": "gpus"}],
            "limits": {"cpu": "4", "memory": "16Gi"},
            "requests": {"cpu": "4", "memory": "16Gi"},
        },
        annotations_gpus=GPUS[0],
        spec_extra={
            "nodeSelector": {"kubernetes.io/hostname": "gpu-node-2"},
            "resourceClaims": [{"name": "gpus", "resourceClaimName": "jupyter-alice-gpus"}],
        },
    )
    assert make_gpu_claim(ws) == {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {
            "name": "jupyter-alice-gpus",
            "namespace": "lab",
            "labels": LABELS,
            "annotations": {
                "org.labgpu.managed": "true",
                "org.labgpu.hub": "lab-a",
                "org.labgpu.user": "alice",
                "org.labgpu.server": "",
                "org.labgpu.gpus": GPUS[0],
            },
        },
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": "gpus",
                        "exactly": {
                            "deviceClassName": "gpu.nvidia.com",
                            "allocationMode": "ExactCount",
                            "count": 1,
                            "selectors": [
                                {"cel": {"expression": f'device.attributes["gpu.nvidia.com"].uuid in ["{GPUS[0]}"]'}}
                            ],
                        },
                    }
                ]
            }
        },
    }


def test_four_exact_gpus_are_one_request_of_four_naming_each_uuid():
    ws = workspace(gpu_uuids=GPUS, gpu_node="gpu-node-2", claim_name="jupyter-alice-gpus")
    names = ", ".join(f'"{u}"' for u in GPUS)
    assert make_gpu_claim(ws)["spec"] == {
        "devices": {
            "requests": [
                {
                    "name": "gpus",
                    "exactly": {
                        "deviceClassName": "gpu.nvidia.com",
                        "allocationMode": "ExactCount",
                        "count": 4,
                        "selectors": [
                            {"cel": {"expression": f'device.attributes["gpu.nvidia.com"].uuid in [{names}]'}}
                        ],
                    },
                }
            ]
        }
    }
    pod = make_pod(ws)
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == env["LABGPU_GPUS"] == ",".join(GPUS)
    assert pod["metadata"]["annotations"]["org.labgpu.gpus"] == ",".join(GPUS)
    assert pod["spec"]["resourceClaims"] == [{"name": "gpus", "resourceClaimName": "jupyter-alice-gpus"}]


def test_count_mode_asks_the_device_plugin_for_n_gpus_on_the_ledgers_node_and_sets_no_device_list():
    ws = workspace(gpu_uuids=GPUS[:2], gpu_mode="count", gpu_node="gpu-node-1")
    assert make_pod(ws) == expected_pod(
        # NVIDIA_VISIBLE_DEVICES is the device plugin's to set: it, not the ledger, picks the GPUs.
        env={"JUPYTERHUB_USER": "alice", "LABGPU_GPU_COUNT": "2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
        resources={
            "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"},
            "requests": {"cpu": "4", "memory": "16Gi"},
        },
        annotations_gpus=",".join(GPUS[:2]),
        spec_extra={"nodeSelector": {"kubernetes.io/hostname": "gpu-node-1"}},
    )


def test_a_mig_device_is_claimed_from_the_mig_device_class_beside_whole_gpus():
    ws = workspace(gpu_uuids=(GPUS[0], MIG), gpu_node="gpu-node-2", claim_name="c")
    assert make_gpu_claim(ws)["spec"]["devices"]["requests"] == [
        {
            "name": "gpus",
            "exactly": {
                "deviceClassName": "gpu.nvidia.com",
                "allocationMode": "ExactCount",
                "count": 1,
                "selectors": [{"cel": {"expression": f'device.attributes["gpu.nvidia.com"].uuid in ["{GPUS[0]}"]'}}],
            },
        },
        {
            "name": "mig",
            "exactly": {
                "deviceClassName": "mig.nvidia.com",
                "allocationMode": "ExactCount",
                "count": 1,
                "selectors": [{"cel": {"expression": f'device.attributes["gpu.nvidia.com"].uuid in ["{MIG}"]'}}],
            },
        },
    ]


def test_simulated_gpus_are_ids_only_no_claim_no_node():
    pod = make_pod(workspace(gpu_uuids=GPUS[:2], gpu_mode="simulated"))
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["LABGPU_GPUS_SIMULATED"] == "1"
    assert env["LABGPU_GPUS"] == ",".join(GPUS[:2])
    assert "resourceClaims" not in pod["spec"] and "nodeSelector" not in pod["spec"]
    assert "claims" not in pod["spec"]["containers"][0]["resources"]


def test_group_folders_are_mounted_at_shared_and_the_claims_are_rwx_of_the_quota():
    pod = make_pod(workspace(shared_claims={"vision-lab": "lab-a-group-vision", "nlp": "lab-a-group-nlp"}))
    container = pod["spec"]["containers"][0]
    assert container["volumeMounts"][2:] == [
        {"name": "shared-nlp", "mountPath": "/shared/nlp"},
        {"name": "shared-vision-lab", "mountPath": "/shared/vision-lab"},
    ]
    assert pod["spec"]["volumes"][2:] == [
        {"name": "shared-nlp", "persistentVolumeClaim": {"claimName": "lab-a-group-nlp"}},
        {"name": "shared-vision-lab", "persistentVolumeClaim": {"claimName": "lab-a-group-vision"}},
    ]
    assert make_group_pvc("lab-a-group-nlp", "lab", "nlp", "lab-a", size=500 * G, storage_class="nfs") == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "lab-a-group-nlp",
            "namespace": "lab",
            "labels": {"org.labgpu.managed": "true", "org.labgpu.hub": "lab-a", "org.labgpu.group": "nlp"},
        },
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "500Gi"}},
            "storageClassName": "nfs",
        },
    }


def test_the_home_is_one_rwo_claim_per_user_of_the_disk_quota():
    assert make_home_pvc("labgpu-home-bob-40lab-2eorg", "lab", "bob@lab.org", "lab-a", size=None) == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "labgpu-home-bob-40lab-2eorg",
            "namespace": "lab",
            "labels": {
                "org.labgpu.managed": "true",
                "org.labgpu.hub": "lab-a",
                "org.labgpu.user": label_value("bob@lab.org"),
            },
        },
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
    }


def test_a_memory_guarantee_is_the_request_and_the_limit_stays_the_quota():
    resources = make_pod(workspace(mem_guarantee=4 * G, cpu_limit=0.5))["spec"]["containers"][0]["resources"]
    assert resources == {"limits": {"cpu": "500m", "memory": "16Gi"}, "requests": {"cpu": "500m", "memory": "4Gi"}}


def test_hardening_is_applied_after_the_admins_settings():
    pod = make_pod(
        workspace(node_selector={"pool": "gpu"}, tolerations=({"key": "nvidia.com/gpu", "operator": "Exists"},))
    )
    assert pod["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert pod["spec"]["containers"][0]["securityContext"] == SECURITY
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_kubespawners_labels_are_kept_and_ours_win():
    pod = make_pod(workspace(extra_labels={"component": "singleuser-server", "org.labgpu.user": "mallory"}))
    assert pod["metadata"]["labels"]["component"] == "singleuser-server"  # KubeSpawner's reflector selects by it
    assert pod["metadata"]["labels"]["org.labgpu.user"] == "alice"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"run_as_uid": 0}, "the workspace must run as a non-root uid (got 0)"),
        ({"gpu_uuids": ("GPU-1",), "gpu_mode": "dra", "claim_name": "c"}, "granted GPUs need the node that holds them"),
        ({"gpu_uuids": ("GPU-1",), "gpu_node": "n"}, "dra mode needs the ResourceClaim's name"),
        (
            {"gpu_uuids": ('GPU-1"] || true || ["',), "gpu_node": "n", "claim_name": "c"},
            "malformed GPU identifiers",
        ),
        ({"gpu_mode": "all"}, "gpu_mode must be one of dra, count, simulated (got 'all')"),
        ({"cpu_limit": 0.001}, "a CPU limit must be at least 0.01 CPUs (got 0.001)"),
    ],
)
def test_what_cannot_be_built_is_refused_with_what_is_wrong(changes, message):
    with pytest.raises(PodConfigError, match=re.escape(message)):
        make_pod(workspace(**changes))


def test_a_uuid_that_could_rewrite_the_cel_selector_is_refused():
    with pytest.raises(PodConfigError, match="malformed GPU identifiers"):
        gpu_selector(('GPU-1"] || device.driver == "x',))


@pytest.mark.parametrize(
    ("size", "quantity"), [(16 * G, "16Gi"), (1536 * 1024**2, "1536Mi"), (2 * 1024**4, "2Ti"), (1000, "1000")]
)
def test_sizes_are_quantities_in_the_largest_exact_unit(size, quantity):
    assert memory_quantity(size) == quantity


@pytest.mark.parametrize(("cpus", "quantity"), [(4, "4"), (0.5, "500m"), (2.25, "2250m"), (0.01, "10m")])
def test_cpus_are_whole_or_millicores(cpus, quantity):
    assert cpu_quantity(cpus) == quantity


LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@given(st.text(max_size=120))
def test_every_user_name_makes_a_valid_label_value_and_a_valid_claim_name(name):
    value = label_value(name)
    assert len(value) <= 63 and LABEL_VALUE.match(value)
    claim = dns_name(f"labgpu-home-{name}")
    assert len(claim) <= 63 and DNS_LABEL.match(claim)


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_two_different_names_never_share_a_label_value(a, b):
    if a != b:
        assert label_value(a) != label_value(b)
