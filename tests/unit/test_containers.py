"""The workspace container the spawner asks Docker for (pure builder, no Docker)."""

import pytest

from labgpu.hub.admin_extras import admin_config_problems
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
            extra_host_config={"security_opt": ["apparmor=lab-workspace"], "cap_drop": []},
            extra_create_kwargs={"labels": {"team": "vision"}},
        )
    )
    assert host["security_opt"] == ["apparmor=lab-workspace", "no-new-privileges:true"]
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


@pytest.mark.parametrize("user", ["0", "0:0", "00", "000:100", 0])
def test_root_user_refused(user):
    with pytest.raises(
        ContainerConfigError, match=r"extra_create_kwargs\.user .* is root \(uid 0\); workspaces run as a non-root user"
    ):
        container_config(spec(extra_create_kwargs={"user": user}))


@pytest.mark.parametrize("user", ["root", "jovyan", "1000:users", "-1", " "])
def test_a_user_name_is_refused_because_the_image_decides_its_uid(user):
    with pytest.raises(ContainerConfigError, match=r"extra_create_kwargs\.user must be a numeric uid"):
        container_config(spec(extra_create_kwargs={"user": user}))


def test_a_numeric_user_from_the_admin_is_used_with_its_group():
    create, _ = container_config(spec(extra_create_kwargs={"user": "1001"}))
    assert create["user"] == "1001:100"
    create, _ = container_config(spec(extra_create_kwargs={"user": "01001:0100"}))
    assert create["user"] == "1001:100"


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
    # DockerSpawner's representation: cpu_quota = cpu_limit * cpu_period, with its 100 ms period.
    assert (host["cpu_period"], host["cpu_quota"]) == (100_000, 250_000)
    assert "nano_cpus" not in host


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


def test_admin_env_cannot_claim_other_gpus():
    with pytest.raises(ContainerConfigError, match="sets LABGPU_GPUS, which the hub sets itself"):
        container_config(
            spec(gpu_uuids=("GPU-aaaa",), extra_create_kwargs={"environment": {"LABGPU_GPUS": "GPU-zzzz"}})
        )


def test_memory_guarantee_is_a_reservation():
    _, host = container_config(spec(mem_limit=8 * 1024**3, mem_reservation=2 * 1024**3))
    assert host["mem_reservation"] == 2 * 1024**3


def test_cpu_limit_above_the_host_means_all_cpus():
    _, host = container_config(spec(cpu_limit=16, host_cpus=2))
    assert (host["cpu_period"], host["cpu_quota"]) == (100_000, 200_000)
    _, host = container_config(spec(cpu_limit=1.5, host_cpus=2))
    assert (host["cpu_period"], host["cpu_quota"]) == (100_000, 150_000)


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
        "memswap_limit": 4 * 1024**3,
        "cpu_period": 100_000,
        "cpu_quota": 200_000,
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
            "NVIDIA_VISIBLE_DEVICES": "GPU-aaaa,GPU-bbbb",
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
        "memswap_limit": 64 * 1024**3,
        "mem_reservation": 32 * 1024**3,
        "cpu_period": 100_000,
        "cpu_quota": 1_600_000,  # 32 asked, the host has 16
        "device_requests": [{"driver": "nvidia", "device_ids": ["GPU-aaaa", "GPU-bbbb"], "capabilities": [["gpu"]]}],
        "port_bindings": {8888: ("127.0.0.1",)},
        "security_opt": ["no-new-privileges:true"],
        "cap_drop": ["ALL"],
        "privileged": False,
    }


# --- the CPU floor (issue 12 item 4) ---------------------------------------------------------------


@pytest.mark.parametrize("cpus", [1e-6, 1e-300, 0.0, 0.009, float("nan"), -1.0])
def test_a_cpu_limit_below_dockers_minimum_is_refused_not_turned_into_no_limit(cpus):
    # A quota that rounds to 0 is "no limit at all" to Docker.
    with pytest.raises(ContainerConfigError, match=r"a CPU limit must be at least 0\.01 CPUs, Docker's smallest"):
        container_config(spec(cpu_limit=cpus))


def test_the_smallest_cpu_limit_is_dockers_smallest_quota():
    _, host = container_config(spec(cpu_limit=0.01))
    assert (host["cpu_period"], host["cpu_quota"]) == (100_000, 1000)


def test_an_admins_cpu_period_is_kept_as_dockerspawner_promises():
    _, host = container_config(spec(cpu_limit=2.0, extra_host_config={"cpu_period": 50_000}))
    assert (host["cpu_period"], host["cpu_quota"]) == (50_000, 100_000)
    with pytest.raises(ContainerConfigError, match="is a quota of 10 microseconds; Docker's smallest is 1000"):
        container_config(spec(cpu_limit=0.01, extra_host_config={"cpu_period": 1000}))


# --- what else reaches the container (issue 12 item 10) ------------------------------------------------


def test_no_swap_on_top_of_the_memory_limit():
    _, host = container_config(spec(mem_limit=8 * 1024**3))
    assert host["memswap_limit"] == host["mem_limit"] == 8 * 1024**3


@pytest.mark.parametrize("driver", ["cdi", "nvidia"])
def test_the_images_nvidia_visible_devices_never_leaks_through(driver):
    create, _ = container_config(
        spec(
            gpu_uuids=("GPU-aaaa", "MIG-cccc"),
            gpu_driver=driver,
            environment={"NVIDIA_VISIBLE_DEVICES": "all"},  # as the image (or get_env) would have it
        )
    )
    assert create["environment"]["NVIDIA_VISIBLE_DEVICES"] == "GPU-aaaa,MIG-cccc"


# --- what an admin's configuration may add: an allowlist (issue 12 item 9) --------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"network_mode": "host"}, "extra_host_config.network_mode is not allowed: the network is the spawner's"),
        ({"volumes_from": ["other"]}, "extra_host_config.volumes_from is not allowed: another container's volumes"),
        ({"mounts": [{"Type": "bind", "Source": "/", "Target": "/h"}]}, "extra_host_config.mounts is not allowed"),
        ({"runtime": "nvidia"}, "extra_host_config.runtime is not allowed: another runtime can expose every GPU"),
        ({"cgroupns": "host"}, "extra_host_config.cgroupns is not allowed"),
        ({"uts_mode": "host"}, "extra_host_config.uts_mode is not allowed: sharing the host's UTS namespace"),
        ({"device_cgroup_rules": ["c 1:3 mr"]}, "extra_host_config.device_cgroup_rules is not allowed"),
        ({"security_opt": ["label=disable"]}, "'label=disable' is not allowed: only an AppArmor or seccomp profile"),
        ({"security_opt": ["no-new-privileges:false"]}, "'no-new-privileges:false' is not allowed"),
        ({"security_opt": ["apparmor=unconfined"]}, "'apparmor=unconfined' is not allowed"),
        ({"sysctls": {"net.ipv4.ip_forward": "1"}}, "extra_host_config.sysctls is not allowed"),
        ({"oom_score_adj": -1000}, "shield itself from the OOM killer"),
        ({"nano_cpus": 0}, "CPU limits come from the quota policy"),
        ({"cpu_quota": -1}, "CPU limits come from the quota policy"),
        ({"memswap_limit": -1}, "no swap beyond its memory limit"),
        ({"frobnicate": 1}, "extra_host_config.frobnicate is not allowed: it is not one of the settings"),
        ({"cpu_period": 10}, "extra_host_config.cpu_period must be a whole number from 1000 to 1000000"),
        ({"ulimits": [{"Name": "rtprio", "Soft": 99, "Hard": 99}]}, "may set only core, memlock, nofile, stack"),
        ({"group_add": ["0"]}, "numeric group ids other than 0"),
        ({"tmpfs": {"/": "size=1g"}}, "the mount point '/' must be an absolute path in the workspace other than /"),
    ],
)
def test_host_config_outside_the_allowlist_is_refused_with_the_reason(extra, message):
    with pytest.raises(ContainerConfigError) as refused:
        container_config(spec(extra_host_config=extra))
    assert message in str(refused.value)


@pytest.mark.parametrize(
    "source, message",
    [
        ("//var/run/docker.sock", "is in /var/run, which gives a workspace control of the host"),
        ("/run", "is in /run"),
        ("/run/containerd/containerd.sock", "is in /run"),
        ("/var/run", "is in /var/run"),
        ("/var/lib", "is in /var/lib"),
        ("/var/lib/docker/volumes/labgpu-home-bob/_data", "is in /var/lib"),
        ("/var", "contains /var/run"),
        ("/srv/../var/lib/x", "is in /var/lib"),
        ("/etc", "is in /etc"),
        ("/proc/1/root", "is in /proc"),
        ("./data", "must be an absolute host path"),
        ("data/sets", "must be an absolute host path"),
    ],
)
def test_binds_of_host_control_paths_are_refused_however_written(source, message):
    for extras in (
        {"volumes": {source: "/mnt/x"}},
        {"volumes": {source: {"bind": "/mnt/x", "mode": "ro"}}},
        {"extra_host_config": {"binds": {source: {"bind": "/mnt/x", "mode": "ro"}}}},
        {"mounts": ({"Type": "bind", "Source": source, "Target": "/mnt/x"},)},
    ):
        with pytest.raises(ContainerConfigError) as refused:
            container_config(spec(**extras))
        assert message in str(refused.value), extras


@pytest.mark.parametrize(
    "volume, message",
    [
        ({"bind": "/data", "mode": "z"}, "mode must be 'rw' or 'ro' (got 'z')"),
        ({"bind": "/data", "mode": "rw", "propagation": "rshared"}, "propagation 'rshared' is not allowed"),
        ({"bind": "data"}, "the mount point 'data' must be an absolute path"),
    ],
)
def test_a_bind_is_a_plain_private_mount(volume, message):
    with pytest.raises(ContainerConfigError) as refused:
        container_config(spec(volumes={"/srv/data": volume}))
    assert message in str(refused.value)


@pytest.mark.parametrize(
    "mount, message",
    [
        (
            {"Type": "volume", "Source": "x", "Target": "/x", "VolumeOptions": {"DriverConfig": {"Name": "local"}}},
            "VolumeOptions.DriverConfig is not allowed",
        ),
        (
            {"Type": "bind", "Source": "/srv", "Target": "/x", "BindOptions": {"Propagation": "rshared"}},
            "BindOptions {'Propagation': 'rshared'} are not allowed",
        ),
        ({"Type": "npipe", "Source": "x", "Target": "/x"}, "Type must be 'bind', 'volume' or 'tmpfs'"),
        ({"Type": "volume", "Source": "x", "Target": "/x", "Extra": 1}, "unknown key(s) Extra"),
    ],
)
def test_dockerspawner_mounts_are_checked_too(mount, message):
    with pytest.raises(ContainerConfigError) as refused:
        container_config(spec(mounts=(mount,)))
    assert message in str(refused.value)


def test_allowed_mounts_reach_the_host_config():
    mounts = ({"Type": "volume", "Source": "datasets", "Target": "/datasets", "ReadOnly": True},)
    _, host = container_config(spec(mounts=mounts))
    assert host["mounts"] == list(mounts)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"image": "evil/miner"}, "extra_create_kwargs.image is not allowed: the image comes from the quota policy"),
        ({"host_config": {"Privileged": True}}, "extra_create_kwargs.host_config is not allowed"),
        ({"volumes": ["/x"]}, "extra_create_kwargs.volumes is not allowed"),
        ({"runtime": "nvidia"}, "extra_create_kwargs.runtime is not allowed"),
        ({"network_disabled": True}, "extra_create_kwargs.network_disabled is not allowed"),
        ({"labels": {"org.labgpu.user": "bob"}}, "the org.labgpu.* labels are the hub's own"),
        ({"environment": ["NVIDIA_VISIBLE_DEVICES=all"]}, "sets NVIDIA_VISIBLE_DEVICES, which the hub sets itself"),
        ({"environment": {"JUPYTERHUB_API_TOKEN": "x"}}, "sets JUPYTERHUB_API_TOKEN"),
        ({"working_dir": "work"}, "extra_create_kwargs.working_dir must be an absolute path"),
    ],
)
def test_create_kwargs_outside_the_allowlist_are_refused_with_the_reason(extra, message):
    with pytest.raises(ContainerConfigError) as refused:
        container_config(spec(extra_create_kwargs=extra))
    assert message in str(refused.value)


@pytest.mark.parametrize("network", ["host", "container:labgpu-bob"])
def test_the_workspace_network_is_never_the_hosts_or_another_containers(network):
    with pytest.raises(ContainerConfigError, match=f"network_name {network!r} is not allowed"):
        container_config(spec(network=network))


def test_what_the_allowlist_holds_reaches_the_container():
    create, host = container_config(
        spec(
            extra_create_kwargs={
                "environment": ["HF_HOME=/home/jovyan/.cache/hf"],
                "labels": {"team": "vision"},
                "working_dir": "/home/jovyan/work",
                "hostname": "workspace",
            },
            extra_host_config={
                "dns": ["10.0.0.2"],
                "ulimits": [{"Name": "memlock", "Soft": -1, "Hard": -1}],
                "storage_opt": {"size": "20G"},
                "tmpfs": {"/scratch": "size=8g"},
                "binds": ["/srv/datasets:/datasets:ro"],
                "read_only": False,
            },
        )
    )
    assert create["environment"]["HF_HOME"] == "/home/jovyan/.cache/hf"
    assert (create["working_dir"], create["hostname"], create["labels"]["team"]) == (
        "/home/jovyan/work",
        "workspace",
        "vision",
    )
    assert host["dns"] == ["10.0.0.2"] and host["storage_opt"] == {"size": "20G"}
    assert host["ulimits"] == [{"Name": "memlock", "Soft": -1, "Hard": -1}]
    assert host["tmpfs"] == {"/scratch": "size=8g"}
    assert host["binds"]["/srv/datasets"] == {"bind": "/datasets", "mode": "ro"}


def test_at_hub_start_every_problem_of_the_configuration_is_listed():
    problems = admin_config_problems(
        extra_create_kwargs={"user": "00"},
        extra_host_config={"network_mode": "host", "binds": ["/var/lib:/x"]},
        volumes={"//var/run/docker.sock": "/var/run/docker.sock"},
        read_only_volumes={"/run": "/hostrun"},
        mounts=[{"Type": "bind", "Source": "/var/lib/docker", "Target": "/d"}],
        network="host",
    )
    assert problems == [
        "extra_create_kwargs.user '00' is root (uid 0); workspaces run as a non-root user",
        "extra_host_config.network_mode is not allowed: the network is the spawner's network_name; "
        "the host's network would expose the host's services",
        "extra_host_config.binds: '/var/lib' is in /var/lib, which gives a workspace control of the host",
        "volumes: '//var/run/docker.sock' is in /var/run, which gives a workspace control of the host",
        "read_only_volumes: '/run' is in /run, which gives a workspace control of the host",
        "mounts[0]: '/var/lib/docker' is in /var/lib, which gives a workspace control of the host",
        "network_name 'host' is not allowed: a workspace gets a network of its own "
        "(the host's or another container's would expose their services)",
    ]
    # A callable extra is the spawner's to call: checked at each spawn instead.
    assert admin_config_problems(extra_host_config=lambda spawner: {"network_mode": "host"}) == []
