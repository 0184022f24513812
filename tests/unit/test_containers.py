"""The workspace container the spawner asks Docker for (pure builder, no Docker)."""

import pytest

from labgpu.hub.containers import ContainerConfigError, WorkspaceSpec, container_config
from labgpu.labels import LABEL_GPUS, LABEL_HUB, LABEL_SERVER, LABEL_USER


def spec(**overrides):
    base = dict(
        name="labgpu-alice",
        image="labgpu/workspace:local",
        user="alice",
        server="",
        hub_id="labgpu",
        environment={"JUPYTERHUB_API_TOKEN": "secret"},
        volumes={"labgpu-home-alice": {"bind": "/home/jovyan", "mode": "rw"}},
    )
    base.update(overrides)
    return WorkspaceSpec(**base)


def test_home_volume_mounted_and_declared():
    create, host = container_config(spec())
    assert host["binds"] == {"labgpu-home-alice": {"bind": "/home/jovyan", "mode": "rw"}}
    assert create["volumes"] == ["/home/jovyan"]


def test_shm_is_not_dockers_64mb_default():
    _, host = container_config(spec())
    assert host["shm_size"] == 2 * 1024**3


def test_labels_name_owner_server_and_hub():
    create, _ = container_config(spec(server="gpu-job", hub_id="lab-a"))
    assert create["labels"][LABEL_USER] == "alice"
    assert create["labels"][LABEL_SERVER] == "gpu-job"
    assert create["labels"][LABEL_HUB] == "lab-a"
    assert create["labels"][LABEL_GPUS] == ""


def test_hardened_defaults():
    create, host = container_config(spec())
    assert create["user"] == "1000:100"
    assert host["privileged"] is False
    assert host["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in host["security_opt"]
    assert host["pids_limit"] == 4096
    assert host["init"] is True


def test_admin_extras_cannot_undo_hardening():
    create, host = container_config(
        spec(
            extra_host_config={"security_opt": ["no-new-privileges:false", "label=disable"], "cap_drop": []},
            extra_create_kwargs={"labels": {"team": "vision"}},
        )
    )
    assert host["security_opt"] == ["label=disable", "no-new-privileges:true"]
    assert host["cap_drop"] == ["ALL"]
    assert create["labels"]["team"] == "vision"
    assert create["labels"][LABEL_USER] == "alice"


@pytest.mark.parametrize("key", ["privileged", "cap_add", "pid_mode", "devices", "device_requests"])
def test_dangerous_host_config_is_refused_with_reason(key):
    value = True if key == "privileged" else ["x"] if key != "pid_mode" else "host"
    with pytest.raises(ContainerConfigError, match=f"extra_host_config.{key} is not allowed"):
        container_config(spec(extra_host_config={key: value}))


def test_unconfined_seccomp_refused():
    with pytest.raises(ContainerConfigError, match="seccomp=unconfined"):
        container_config(spec(extra_host_config={"security_opt": ["seccomp=unconfined"]}))


@pytest.mark.parametrize("user", ["root", "0", "0:0"])
def test_root_user_refused(user):
    with pytest.raises(ContainerConfigError, match="non-root"):
        container_config(spec(extra_create_kwargs={"user": user}))


@pytest.mark.parametrize(
    "source", ["/var/run/docker.sock", "/run/docker.sock", "/var/run//docker.sock", "/var/lib/docker/volumes", "/"]
)
def test_docker_socket_and_host_root_never_mounted(source):
    with pytest.raises(ContainerConfigError, match="control of the host"):
        container_config(spec(volumes={source: "/mnt/x"}))
    with pytest.raises(ContainerConfigError, match="control of the host"):
        container_config(spec(extra_host_config={"binds": [f"{source}:/mnt/x"]}))


def test_admin_binds_add_to_home():
    _, host = container_config(spec(extra_host_config={"binds": ["/data/datasets:/datasets:ro"]}))
    assert host["binds"]["labgpu-home-alice"]["bind"] == "/home/jovyan"
    assert host["binds"]["/data/datasets"] == {"bind": "/datasets", "mode": "ro"}


def test_limits_become_docker_units():
    _, host = container_config(spec(mem_limit=8 * 1024**3, cpu_limit=2.5))
    assert host["mem_limit"] == 8 * 1024**3
    assert host["nano_cpus"] == 2_500_000_000


def test_port_published_on_loopback_only():
    create, host = container_config(spec())
    assert create["ports"] == {"8888/tcp": None}
    assert host["port_bindings"] == {8888: ("127.0.0.1",)}
    _, internal = container_config(spec(publish_on=None))
    assert "port_bindings" not in internal


def test_no_gpus_means_no_device_request_and_none_visible():
    create, host = container_config(spec())
    assert "device_requests" not in host
    assert create["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert create["environment"]["LABGPU_GPUS"] == ""


def test_gpus_requested_by_uuid_never_by_count():
    uuids = ("GPU-aaaa", "GPU-bbbb")
    create, host = container_config(spec(gpu_uuids=uuids))
    assert host["device_requests"] == [
        {"driver": "nvidia", "device_ids": ["GPU-aaaa", "GPU-bbbb"], "capabilities": [["gpu"]]}
    ]
    assert "count" not in host["device_requests"][0]
    assert create["environment"]["LABGPU_GPUS"] == "GPU-aaaa,GPU-bbbb"
    assert create["environment"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert create["labels"][LABEL_GPUS] == "GPU-aaaa,GPU-bbbb"


def test_cdi_device_names_including_mig():
    _, host = container_config(spec(gpu_uuids=("GPU-aaaa", "MIG-cccc"), gpu_driver="cdi"))
    assert host["device_requests"] == [
        {"driver": "cdi", "device_ids": ["nvidia.com/gpu=GPU-aaaa", "nvidia.com/gpu=MIG-cccc"]}
    ]


def test_user_env_cannot_claim_other_gpus():
    create, _ = container_config(
        spec(gpu_uuids=("GPU-aaaa",), extra_create_kwargs={"environment": {"LABGPU_GPUS": "GPU-zzzz"}})
    )
    assert create["environment"]["LABGPU_GPUS"] == "GPU-aaaa"


def test_memory_guarantee_is_a_reservation():
    _, host = container_config(spec(mem_limit=8 * 1024**3, mem_reservation=2 * 1024**3))
    assert host["mem_reservation"] == 2 * 1024**3


def test_cpu_limit_above_the_host_means_all_cpus():
    _, host = container_config(spec(cpu_limit=16, host_cpus=2))
    assert host["nano_cpus"] == 2_000_000_000
    _, host = container_config(spec(cpu_limit=1.5, host_cpus=2))
    assert host["nano_cpus"] == 1_500_000_000


# --- the whole output, as kubespawner's test_objects checks make_pod's -------------------------


def test_a_cpu_workspace_is_exactly_this_container():
    create, host = container_config(
        spec(
            name="labgpu-bob-notes",
            user="bob",
            server="notes",
            command=["jupyterhub-singleuser"],
            mem_limit=4 * 1024**3,
            cpu_limit=2.0,
            host_cpus=16,
            publish_on=None,
            network="labgpu",
        )
    )
    assert create == {
        "image": "labgpu/workspace:local",
        "name": "labgpu-bob-notes",
        "environment": {"JUPYTERHUB_API_TOKEN": "secret", "LABGPU_GPUS": "", "NVIDIA_VISIBLE_DEVICES": "void"},
        "labels": {
            "org.labgpu.managed": "true",
            "org.labgpu.hub": "labgpu",
            "org.labgpu.user": "bob",
            "org.labgpu.server": "notes",
            "org.labgpu.gpus": "",
        },
        "ports": {"8888/tcp": None},
        "command": ["jupyterhub-singleuser"],
        "user": "1000:100",
        "volumes": ["/home/jovyan"],
    }
    assert host == {
        "auto_remove": True,
        "binds": {"labgpu-home-alice": {"bind": "/home/jovyan", "mode": "rw"}},
        "shm_size": 2 * 1024**3,
        "pids_limit": 4096,
        "init": True,
        "network_mode": "labgpu",
        "mem_limit": 4 * 1024**3,
        "nano_cpus": 2_000_000_000,
        "security_opt": ["no-new-privileges:true"],
        "cap_drop": ["ALL"],
        "privileged": False,
    }


def test_a_two_gpu_workspace_is_exactly_this_container():
    create, host = container_config(
        spec(
            gpu_uuids=("GPU-aaaa", "GPU-bbbb"),
            mem_limit=64 * 1024**3,
            mem_reservation=32 * 1024**3,
            cpu_limit=32.0,
            host_cpus=16,
            shm_size=8 * 1024**3,
            extra_create_kwargs={"working_dir": "/home/jovyan/work"},
        )
    )
    assert create == {
        "image": "labgpu/workspace:local",
        "name": "labgpu-alice",
        "environment": {
            "JUPYTERHUB_API_TOKEN": "secret",
            "LABGPU_GPUS": "GPU-aaaa,GPU-bbbb",
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        },
        "labels": {
            "org.labgpu.managed": "true",
            "org.labgpu.hub": "labgpu",
            "org.labgpu.user": "alice",
            "org.labgpu.server": "",
            "org.labgpu.gpus": "GPU-aaaa,GPU-bbbb",
        },
        "ports": {"8888/tcp": None},
        "working_dir": "/home/jovyan/work",
        "user": "1000:100",
        "volumes": ["/home/jovyan"],
    }
    assert host == {
        "auto_remove": True,
        "binds": {"labgpu-home-alice": {"bind": "/home/jovyan", "mode": "rw"}},
        "shm_size": 8 * 1024**3,
        "pids_limit": 4096,
        "init": True,
        "network_mode": "bridge",
        "mem_limit": 64 * 1024**3,
        "mem_reservation": 32 * 1024**3,
        "nano_cpus": 16_000_000_000,  # 32 asked, the host has 16
        "device_requests": [{"driver": "nvidia", "device_ids": ["GPU-aaaa", "GPU-bbbb"], "capabilities": [["gpu"]]}],
        "port_bindings": {8888: ("127.0.0.1",)},
        "security_opt": ["no-new-privileges:true"],
        "cap_drop": ["ALL"],
        "privileged": False,
    }
