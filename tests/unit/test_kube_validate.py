"""Every manifest LabGPU builds or ships for Kubernetes, validated offline against the
Kubernetes API's own schemas (kubernetes-validate, strict: an unknown field is an error) for the
version we name. No cluster runs here: this is what stands in for ``kubectl apply --dry-run=server``.

Kubernetes 1.34 is the version: Dynamic Resource Allocation's ``resource.k8s.io/v1``
(ResourceClaim, DeviceClass, ResourceSlice) is GA from it, and kubernetes-validate 1.37.0
(pinned in the test extra) bundles its schemas.
"""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_asyncio.client import ApiClient
from traitlets.config import Config

from labgpu.kube import startup
from labgpu.kube.objects import make_gpu_claim, make_group_pvc, make_home_pvc, make_pod
from labgpu.kube.spawner import GPUKubeSpawner, to_model
from labgpu.quota import load_policy_text
from tests.unit.test_kube_objects import GPUS, MIG, workspace

KUBERNETES_VERSION = "1.34.0"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
G = 1024**3

WORKSPACES = {
    "cpu": workspace(),
    "1 exact GPU": workspace(gpu_uuids=GPUS[:1], gpu_node="gpu-node-2", claim_name="jupyter-alice-gpus"),
    "4 exact GPUs": workspace(gpu_uuids=GPUS, gpu_node="gpu-node-2", claim_name="jupyter-alice-gpus"),
    "count": workspace(gpu_uuids=GPUS[:2], gpu_mode="count", gpu_node="gpu-node-1"),
    "MIG": workspace(gpu_uuids=(MIG,), gpu_node="gpu-node-2", claim_name="jupyter-alice-gpus"),
    "group folders": workspace(
        shared_claims={"vision-lab": "lab-a-group-vision-lab"},
        tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
    ),
}


def manifests():
    for name, ws in WORKSPACES.items():
        yield f"pod ({name})", make_pod(ws)
        if ws.claim_name:
            yield f"ResourceClaim ({name})", make_gpu_claim(ws)
    yield "home PVC", make_home_pvc("labgpu-home-alice", "lab", "alice", "lab-a", size=50 * G, storage_class="fast")
    yield "group PVC", make_group_pvc("lab-a-group-nlp", "lab", "nlp", "lab-a", size=2 * 1024**4)


def deploy_documents():
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "values.yaml":  # Helm values, not an API object: test_the_helm_values_... below
            continue
        for number, document in enumerate(yaml.safe_load_all(path.read_text())):
            if document:
                yield f"{path.name}#{number} {document['kind']}", document


def validate(manifest):
    try:
        return kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:  # the whole schema is in str(e): show where and what
        pytest.fail(f"{manifest['kind']} invalid at {list(e.caused_by.path)}: {e.caused_by.message}", pytrace=False)


@pytest.mark.parametrize(("name", "manifest"), list(manifests()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_manifest_we_build_is_valid_kubernetes(name, manifest):
    assert validate(manifest) == "1.34"


@pytest.mark.parametrize(("name", "manifest"), list(deploy_documents()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_deploy_file_is_valid_kubernetes(name, manifest):
    assert validate(manifest) == "1.34"


def test_the_deploy_files_are_the_ones_the_readme_names():
    names = sorted(p.name for p in DEPLOY.iterdir())
    assert names == [
        "hub.Dockerfile",
        "ledger-secret.example.yaml",
        "poller-daemonset.yaml",
        "quotas-configmap.yaml",
        "rbac.yaml",
        "values.yaml",
    ]
    kinds = sorted({document["kind"] for _, document in deploy_documents()})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Role",
        "RoleBinding",
        "Secret",
        "ServiceAccount",
    ]


def test_the_validator_is_not_vacuous_a_wrong_field_fails():
    claim = make_gpu_claim(WORKSPACES["1 exact GPU"])
    claim["spec"]["devices"]["requests"][0]["exactly"]["count"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError, match="'one' is not of type"):
        kubernetes_validate.validate(claim, KUBERNETES_VERSION, strict=True)
    pod = make_pod(WORKSPACES["cpu"])
    pod["spec"]["containers"][0]["securityContext"]["dropCapabilities"] = ["ALL"]
    with pytest.raises(kubernetes_validate.ValidationError, match="dropCapabilities"):
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_dra_v1_claims_need_kubernetes_1_34():
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(make_gpu_claim(WORKSPACES["1 exact GPU"]), "1.33.0", strict=True)


@pytest.mark.parametrize(
    ("kind", "manifest"),
    [
        ("V1Pod", make_pod(WORKSPACES["4 exact GPUs"])),
        ("V1Pod", make_pod(WORKSPACES["count"])),
        ("V1PersistentVolumeClaim", make_home_pvc("h", "lab", "alice", "lab-a", size=G)),
    ],
)
async def test_the_api_client_sends_exactly_the_manifest_we_built(kind, manifest):
    """KubeSpawner hands the API client a model: ours must serialize back to the same manifest."""
    async with ApiClient() as api:
        assert api.sanitize_for_serialization(to_model(kind, manifest)) == manifest


def test_the_quota_configmap_holds_a_valid_policy():
    (configmap,) = yaml.safe_load_all((DEPLOY / "quotas-configmap.yaml").read_text())
    policy = load_policy_text(configmap["data"]["quotas.yaml"], "quotas-configmap.yaml")
    assert policy.spec.groups["vision-lab"].shared_volume


def test_the_helm_values_select_our_spawner_with_settings_it_has(monkeypatch):
    """hub.extraConfig runs in the hub: compile and run it against a Config, as Z2JH does."""
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    code = values["hub"]["extraConfig"]["labgpu"]
    started = []
    monkeypatch.setattr(startup, "prepare_cluster_hub", lambda **kwargs: started.append(kwargs))
    monkeypatch.setenv("LABGPU_LEDGER", "postgresql://labgpu@postgres/labgpu")
    c = Config()
    c.JupyterHub.services = []
    c.JupyterHub.load_roles = []
    exec(compile(code, "values.yaml:hub.extraConfig.labgpu", "exec"), {"c": c})

    assert c.JupyterHub.spawner_class == "labgpu-kube"
    traits = GPUKubeSpawner.class_traits(config=True)
    assert set(c.GPUKubeSpawner) <= set(traits), set(c.GPUKubeSpawner) - set(traits)
    assert started == [
        {
            "quota_files": ["/etc/labgpu/quotas/quotas.yaml"],
            "ledger_url": "postgresql://labgpu@postgres/labgpu",
            "hub_id": "labgpu-k8s",
            "namespace": "labgpu",
            "gpu_mode": "dra",
        }
    ]
    assert [s["name"] for s in c.JupyterHub.services] == ["labgpu-reclaim"]
    assert values["singleuser"]["storage"]["type"] == "none"  # the spawner builds the claims
    assert values["scheduling"]["userScheduler"]["enabled"] is False


def test_the_poller_daemonset_names_the_hub_the_values_name():
    (daemonset,) = yaml.safe_load_all((DEPLOY / "poller-daemonset.yaml").read_text())
    pod = daemonset["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert pod["hostPID"] is True  # NVML reports host PIDs
    assert env["LABGPU_HUB_ID"] == "labgpu-k8s"
    assert pod["containers"][0]["command"][:4] == ["labgpu", "poller", "--labels", "kube"]
