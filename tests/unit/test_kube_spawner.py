"""GPUKubeSpawner without a cluster, and its contract with GPUDockerSpawner: for the same quota
file and the same request, both backends refuse the same options with the same message, and
give the workspace the same limits, labels and environment (the pod's annotations are the
container's labels; the GPU variables are the grant on both).

Spawners are made as JupyterHub makes them (an in-memory hub database, ``User.get_spawner``);
the Kubernetes API is a recorder that also answers ResourceSlices and pod reads, and Docker is
tests/unit/test_spawner.py's recorder.
"""

from __future__ import annotations

import kubespawner.spawner as kubespawner_module
import pytest
from jupyterhub import orm
from jupyterhub.objects import Hub
from jupyterhub.spawner import SpawnException
from jupyterhub.user import User
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.rest import ApiException
from traitlets.config import Config

from labgpu.hub import resources as hub_resources
from labgpu.hub import shared_folders
from labgpu.hub.spawner import GPUDockerSpawner
from labgpu.kube import spawner as kube_spawner_module
from labgpu.kube.spawner import GPUKubeSpawner
from labgpu.units import parse_size
from tests.unit.test_spawner import QUOTAS, RecordingDocker

G = 1024**3


class Reply:
    """What the API client returns: an object with ``items`` / ``status``, and ``to_dict``."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def to_dict(self):
        return self.__dict__["body"]


class RecordingKube:
    """Stands in for CoreV1Api and ResourceV1Api: records each call; knows the GPU nodes' slices
    and which pods exist."""

    def __init__(self, slices=(), pods=None):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.slices = list(slices)
        self.pods = dict(pods or {})  # name -> phase

    def __getattr__(self, method):
        async def call(*args, **kwargs):
            self.calls.append((method, args, kwargs))
            if method == "list_resource_slice":
                return Reply(items=[Reply(body=s) for s in self.slices])
            if method == "read_namespaced_pod":
                if args[0] not in self.pods:
                    raise ApiException(status=404, reason="Not Found")
                return Reply(status=Reply(phase=self.pods[args[0]]))
            if method.startswith("delete_") and args and args[0] not in self.pods and "claim" not in method:
                raise ApiException(status=404, reason="Not Found")
            return None

        return call

    def made(self, method):
        return [(args, kwargs) for m, args, kwargs in self.calls if m == method]


def resource_slice(node, uuids, driver="gpu.nvidia.com"):
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-{driver}"},
        "spec": {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": [
                {
                    "name": f"gpu-{i}",
                    "attributes": {
                        "type": {"string": "gpu"},
                        "uuid": {"string": uuid},
                        "productName": {"string": "NVIDIA A100-SXM4-80GB"},
                    },
                    "capacity": {"memory": {"value": "80Gi"}},
                }
                for i, uuid in enumerate(uuids)
            ],
        },
    }


@pytest.fixture
def hub_db():
    return orm.new_session_factory("sqlite:///:memory:")()


@pytest.fixture
def quotas(tmp_path):
    path = tmp_path / "quotas.yaml"
    path.write_text(QUOTAS)
    return str(path)


@pytest.fixture
def kube_api(monkeypatch):
    api = RecordingKube()
    monkeypatch.setattr(kubespawner_module, "load_config", lambda **kwargs: None)
    monkeypatch.setattr(kubespawner_module, "shared_client", lambda name: api)
    monkeypatch.setattr(kube_spawner_module, "shared_client", lambda name: api)
    return api


@pytest.fixture
def make(hub_db, kube_api, monkeypatch):
    """``make(cls, name="", groups=(), **traits)``: a GPUDockerSpawner or GPUKubeSpawner of alice."""
    docker = RecordingDocker()
    monkeypatch.setattr(GPUDockerSpawner, "client", docker)
    monkeypatch.setattr(GPUDockerSpawner, "_host_cpus", None)
    monkeypatch.setattr(shared_folders, "_prepared_folders", set())
    monkeypatch.setattr(shared_folders, "_linked_homes", set())
    hub = Hub()  # one hub for both spawners: the same API URLs in their environments

    def make_spawner(cls, name="", groups=(), **traits):
        orm_user = hub_db.query(orm.User).filter_by(name="alice").one_or_none()
        if orm_user is None:
            orm_user = orm.User(name="alice")
            hub_db.add(orm_user)
        for group in groups:
            orm_group = hub_db.query(orm.Group).filter_by(name=group).one_or_none() or orm.Group(name=group)
            if orm_group not in orm_user.groups:
                orm_user.groups.append(orm_group)
        if name not in orm_user.orm_spawners:
            hub_db.add(orm.Spawner(name=name, user=orm_user))
        hub_db.commit()
        config = Config()
        for trait, value in {"hub_id": "lab-a", **traits}.items():
            setattr(getattr(config, cls.__name__), trait, value)
        user = User(orm_user, {"spawner_class": cls, "config": config, "hub": hub})
        spawner = user.get_spawner(name)
        if cls is GPUDockerSpawner:
            spawner.docker = docker
            spawner.recorder = docker
        return spawner

    return make_spawner


# --- the contract: same quota file, same request, same workspace ------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"gpus": 3},
        {"memory": "64G"},
        {"cpus": 100},
        {"image": "nope"},
        {"privileged": True},
        {"gpus": [1]},
        {"cpus": 1e-6},
    ],
)
async def test_both_backends_refuse_the_same_options_with_the_same_message(make, quotas, ledger_url, options):
    refusals = []
    for cls in (GPUDockerSpawner, GPUKubeSpawner):
        spawner = make(cls, groups=("vision-lab",), quota_files=[quotas], ledger_url=ledger_url)
        with pytest.raises(SpawnException) as refused:
            await spawner.apply_user_options(spawner, options)
        refusals.append((refused.value.status_code, refused.value.log_message))
    assert refusals[0] == refusals[1]
    assert refusals[0][0] == 400


async def test_both_backends_give_the_same_limits_labels_and_environment(make, quotas, ledger_url, kube_api):
    granted = tuple(h.gpu.uuid for h in hub_resources.ledger(ledger_url).holdings()[:2])
    kube_api.slices = [resource_slice("gpu-node-1", granted)]
    request = {"gpus": 2, "memory": "8G", "cpus": 3, "image": "tf"}

    docker = make(GPUDockerSpawner, groups=("vision-lab",), quota_files=[quotas], ledger_url=ledger_url)
    await docker.apply_user_options(docker, request)
    docker.gpu_uuids = granted
    await docker.create_object()
    container = docker.recorder.made("create_container")[-1]
    host = container["host_config"]

    kube = make(GPUKubeSpawner, groups=("vision-lab",), quota_files=[quotas], ledger_url=ledger_url)
    await kube.apply_user_options(kube, request)
    kube.gpu_uuids = granted
    await kube.prepare_workload()
    async with ApiClient() as api:
        pod = api.sanitize_for_serialization(await kube.get_pod_manifest())
    notebook = pod["spec"]["containers"][0]
    limits = notebook["resources"]["limits"]

    # Limits: memory, CPUs, /dev/shm and the user, as the quota says.
    assert host["mem_limit"] == parse_size(limits["memory"]) == 8 * G
    assert host["cpu_quota"] / host["cpu_period"] == float(limits["cpu"]) == 3
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "shm")["emptyDir"]
    assert host["shm_size"] == parse_size(shm["sizeLimit"]) == G
    pod_user = pod["spec"]["securityContext"]
    assert container["user"] == f"{pod_user['runAsUser']}:{pod_user['runAsGroup']}"  # one uid per user, both
    assert host.get("group_add") == [str(g) for g in pod_user["supplementalGroups"]]  # the group folders' gids
    assert container["image"] == notebook["image"] == "lab/tf:2"
    # Labels: the container's labels are the pod's annotations, value for value.
    labgpu_annotations = {k: v for k, v in pod["metadata"]["annotations"].items() if k.startswith("org.labgpu.")}
    assert container["labels"] == labgpu_annotations
    assert labgpu_annotations["org.labgpu.gpus"] == ",".join(granted)
    # Environment: the same variables (the GPU ones are the grant), but what each backend adds.
    pod_env = {e["name"]: e["value"] for e in notebook["env"]}
    docker_env = container["environment"]
    assert {k: docker_env[k] for k in ("LABGPU_GPUS", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")} == {
        k: pod_env[k] for k in ("LABGPU_GPUS", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
    }
    backend_specific = {
        "JUPYTER_IMAGE",
        "JUPYTERHUB_API_TOKEN",
        "JPY_API_TOKEN",
        "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES",
    }
    assert {k: v for k, v in docker_env.items() if k not in backend_specific} == {
        k: v for k, v in pod_env.items() if k not in backend_specific
    }
    # Hardening, in each backend's terms.
    assert host["cap_drop"] == notebook["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert host["privileged"] is notebook["securityContext"]["privileged"] is False
    assert "no-new-privileges:true" in host["security_opt"]
    assert notebook["securityContext"]["allowPrivilegeEscalation"] is False


# --- GPUKubeSpawner's own steps ---------------------------------------------------------------


async def test_a_dra_grant_becomes_a_claim_on_its_uuids_and_a_pod_on_their_node(make, quotas, ledger_url, kube_api):
    uuids = [h.gpu.uuid for h in hub_resources.ledger(ledger_url).holdings()]
    kube_api.slices = [resource_slice("gpu-node-1", uuids[:4]), resource_slice("gpu-node-2", uuids[4:])]
    kube = make(GPUKubeSpawner, groups=("vision-lab",), quota_files=[quotas], ledger_url=ledger_url)
    await kube.apply_user_options(kube, {"gpus": 2})
    kube.gpu_uuids = await kube.acquire_gpus()  # the ledger's grant, as start() asks it
    await kube.prepare_workload()

    ((namespace, claim), _) = kube_api.made("create_namespaced_resource_claim")[0]
    assert claim["metadata"]["name"] == "jupyter-alice-gpus"
    selector = claim["spec"]["devices"]["requests"][0]["exactly"]["selectors"][0]["cel"]["expression"]
    assert all(u in selector for u in kube.gpu_uuids)
    node = "gpu-node-1" if kube.gpu_uuids[0] in uuids[:4] else "gpu-node-2"
    pod = await kube.get_pod_manifest()
    assert pod.spec.node_selector == {"kubernetes.io/hostname": node}
    assert pod.spec.resource_claims[0].resource_claim_name == "jupyter-alice-gpus"
    # A stale claim of an earlier start is deleted first; the group's RWX folder is ensured.
    assert kube_api.made("delete_namespaced_resource_claim")[0][0] == ("jupyter-alice-gpus", namespace)
    (pvc_args, _) = kube_api.made("create_namespaced_persistent_volume_claim")[0]
    assert pvc_args[1]["spec"]["accessModes"] == ["ReadWriteMany"]


async def test_a_grant_on_gpus_no_node_reports_is_refused_with_what_to_do(make, quotas, ledger_url, kube_api):
    kube = make(GPUKubeSpawner, groups=("vision-lab",), quota_files=[quotas], ledger_url=ledger_url)
    await kube.apply_user_options(kube, {"gpus": 1})
    kube.gpu_uuids = ("GPU-00000000-0000-0000-0000-000000000000",)
    with pytest.raises(SpawnException) as refused:
        await kube.prepare_workload()
    assert "no node of the cluster reports GPU(s) GPU-00000000" in refused.value.log_message
    assert "is NVIDIA's DRA driver running" in refused.value.log_message
    assert kube_api.made("create_namespaced_resource_claim") == []


async def test_count_mode_pins_the_pod_to_the_node_map_and_asks_the_device_plugin(make, quotas, ledger_url, kube_api):
    uuids = [h.gpu.uuid for h in hub_resources.ledger(ledger_url).holdings()]
    kube = make(
        GPUKubeSpawner,
        groups=("vision-lab",),
        quota_files=[quotas],
        ledger_url=ledger_url,
        gpu_mode="count",
        gpu_node_map={"gpu-node-7": uuids},
    )
    await kube.apply_user_options(kube, {"gpus": 2})
    kube.gpu_uuids = await kube.acquire_gpus()
    await kube.prepare_workload()
    pod = await kube.get_pod_manifest()
    assert pod.spec.node_selector == {"kubernetes.io/hostname": "gpu-node-7"}
    assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "2"
    assert pod.spec.resource_claims is None
    assert kube_api.made("create_namespaced_resource_claim") == []


async def test_gpus_are_released_only_once_the_api_server_says_the_pod_is_gone(make, quotas, ledger_url, kube_api):
    ledger = hub_resources.ledger(ledger_url)
    kube = make(GPUKubeSpawner, groups=("vision-lab",), quota_files=[quotas], ledger_url=ledger_url)
    await kube.apply_user_options(kube, {"gpus": 1})
    kube.gpu_uuids = await kube.acquire_gpus()
    kube_api.pods[kube.pod_name] = "Running"
    await kube.release_gpus("stopped")
    assert ledger.allocation_for("alice") is not None  # the pod still runs: kept (and watched)
    kube.kept_gpus.pop(kube.server_key).watch.cancel()

    kube_api.pods[kube.pod_name] = "Succeeded"
    await kube.release_gpus("stopped")
    assert ledger.allocation_for("alice") is None


async def test_the_home_claim_is_the_users_disk_quota(make, tmp_path, ledger_url):
    quotas = tmp_path / "disk.yaml"
    quotas.write_text(QUOTAS.replace("named_servers: 1}", "named_servers: 1, disk: 20G}"))
    kube = make(GPUKubeSpawner, quota_files=[str(quotas)], ledger_url=ledger_url)
    await kube.apply_user_options(kube, {})
    pvc = kube.get_pvc_manifest()
    assert (pvc.metadata.name, pvc.spec.access_modes) == ("labgpu-home-alice", ["ReadWriteOnce"])
    assert pvc.spec.resources.requests == {"storage": "20Gi"}


def test_the_spawner_is_registered_as_labgpu_kube():
    from importlib.metadata import entry_points

    (entry,) = [e for e in entry_points(group="jupyterhub.spawners") if e.name == "labgpu-kube"]
    assert entry.load() is GPUKubeSpawner


async def test_a_grant_across_nodes_is_refused_as_capacity_and_its_gpus_go_back(make, quotas, ledger_url, kube_api):
    uuids = [h.gpu.uuid for h in hub_resources.ledger(ledger_url).holdings()]
    kube_api.slices = [resource_slice(f"node-{i}", [u]) for i, u in enumerate(uuids)]  # one GPU per node
    kube = make(GPUKubeSpawner, groups=("vision-lab",), quota_files=[quotas], ledger_url=ledger_url)
    await kube.apply_user_options(kube, {"gpus": 2})
    kube.gpu_uuids = await kube.acquire_gpus()
    with pytest.raises(SpawnException) as refused:
        await kube.prepare_workload()
    assert refused.value.status_code == 503
    assert refused.value.log_message.startswith(
        "No single node has 2 free GPUs together (the granted GPUs are on 2 nodes"
    )


async def test_a_start_that_fails_before_the_pod_gives_the_gpus_back(make, quotas, ledger_url, kube_api, monkeypatch):
    """The whole start: the ledger grants, placement refuses (GPUs on no node), the grant is released."""
    ledger = hub_resources.ledger(ledger_url)
    kube = make(GPUKubeSpawner, groups=("vision-lab",), quota_files=[quotas], ledger_url=ledger_url)
    await kube.apply_user_options(kube, {"gpus": 2})
    reached = []
    monkeypatch.setattr(kubespawner_module.KubeSpawner, "start", lambda self: reached.append(self))
    with pytest.raises(SpawnException, match="Your GPUs cannot be given to a pod"):
        await kube.start()  # no ResourceSlice names the granted GPUs
    assert reached == []  # KubeSpawner never created a pod
    assert ledger.allocation_for("alice") is None  # the pod does not exist: released at once
