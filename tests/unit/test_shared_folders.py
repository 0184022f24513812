"""Group shared folders: a quota file names folders, not volumes; each hub keeps its own; a
folder is mounted outside the home; a failed preparation is repaired by the next spawn."""

from __future__ import annotations

import pytest
from docker.errors import NotFound
from jupyterhub.spawner import SpawnException

from labgpu.hub import shared_folders
from labgpu.hub.shared_folders import prepare_shared_folders, shared_folder_binds
from labgpu.labels import LABEL_KIND, LABEL_MANAGED
from labgpu.quota import PolicyError, load_policy_text, resolve
from labgpu.quota.volumes import group_volume_name


def test_a_folder_lives_in_a_volume_namespaced_by_the_hub():
    assert group_volume_name("labgpu", "vision-lab") == "labgpu-group-vision-lab"
    assert group_volume_name("hub-b", "vision-lab") == "hub-b-group-vision-lab"  # two hubs, two folders


def test_a_folder_named_after_a_home_volume_is_not_that_home():
    assert group_volume_name("labgpu", "labgpu-home-alice") == "labgpu-group-labgpu-home-alice"


def test_a_name_already_in_the_hubs_namespace_is_taken_as_is():
    # The names of the layout before namespacing (labgpu-group-<group>) keep their data.
    assert group_volume_name("labgpu", "labgpu-group-vision") == "labgpu-group-vision"


@pytest.mark.parametrize("folder", ["vision@lab", "a+b", "../etc", "a/b", ""])
def test_a_name_docker_refuses_is_refused_with_the_reason(folder):
    with pytest.raises(ValueError, match="which Docker refuses"):
        group_volume_name("labgpu", folder)


def test_folders_are_mounted_under_shared_outside_the_home():
    assert shared_folder_binds({"vision-lab": "vision-lab", "nlp": "datasets"}, "lab") == {
        "lab-group-vision-lab": {"bind": "/shared/vision-lab", "mode": "rw"},
        "lab-group-datasets": {"bind": "/shared/nlp", "mode": "rw"},
    }


def test_the_policy_gives_folder_names_and_refuses_a_group_name_no_volume_can_carry():
    base = 'images: {pytorch: {image: "x"}}\n'
    policy = load_policy_text(
        base + "groups:\n  a: {shared_volume: true}\n  b: {shared_volume: datasets}\n  c: {shared_volume: false}\n",
        "quotas.yaml",
    )
    assert resolve(policy, "u", ["a", "b", "c"]).shared_volumes == {"a": "a", "b": "datasets"}
    with pytest.raises(PolicyError) as refused:
        load_policy_text(base + "groups:\n  vision@lab: {shared_volume: true}\n", "quotas.yaml")
    assert list(refused.value.errors) == [
        "quotas.yaml:3:31: groups.vision@lab.shared_volume: true names the folder's Docker volume after the group, "
        "but 'vision@lab' cannot be part of a volume name (letters, digits, _ . - only); "
        "name it: shared_volume: vision-lab"
    ]


class FakeDocker:
    """Docker for the preparation: volumes that exist, and the exit status of the helper container."""

    def __init__(self, existing=(), status=0):
        self.volumes = set(existing)
        self.status = status
        self.calls: list[tuple[str, tuple, dict]] = []

    async def __call__(self, method, *args, **kwargs):
        self.calls.append((method, args, kwargs))
        if method == "inspect_volume":
            if args[0] not in self.volumes:
                raise NotFound("no such volume")
            return {"Name": args[0]}
        if method == "create_volume":
            self.volumes.add(args[0])
        if method == "create_container":
            return {"Id": "helper"}
        if method == "wait":
            return {"StatusCode": self.status}
        if method == "logs":
            return b"chown: /shared/vision: Operation not permitted"
        return None

    def scripts(self):
        return [kwargs["command"][2] for m, _, kwargs in self.calls if m == "create_container"]


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    monkeypatch.setattr(shared_folders, "_prepared_folders", set())
    monkeypatch.setattr(shared_folders, "_linked_homes", set())


async def prepare(docker, binds, home="lab-home-alice"):
    return await prepare_shared_folders(
        docker, dict, binds, image="img", uid="1000", gid="100", home_volume=home, home_mount="/home/jovyan"
    )


BINDS = {"lab-group-vision": {"bind": "/shared/vision", "mode": "rw"}}


async def test_a_new_folder_is_created_labelled_and_handed_to_the_workspace_user_once_per_process():
    docker = FakeDocker()
    assert await prepare(docker, BINDS) == ["lab-group-vision"]
    created = [(a, k) for m, a, k in docker.calls if m == "create_volume"]
    assert created == [(("lab-group-vision",), {"labels": {LABEL_MANAGED: "true", LABEL_KIND: "group-share"}})]
    (script,) = docker.scripts()
    assert "chown 1000:100 /shared/vision && chmod 2775 /shared/vision" in script
    assert "ln -sn /shared /home/jovyan/shared" in script
    helper = next(k for m, _, k in docker.calls if m == "create_container")
    assert helper["host_config"]["network_mode"] == "none"
    assert helper["host_config"]["cap_drop"] == ["ALL"]
    assert helper["host_config"]["binds"] == {
        "lab-group-vision": {"bind": "/shared/vision", "mode": "rw"},
        "lab-home-alice": {"bind": "/home/jovyan", "mode": "rw"},  # where the image's home gets copied in
    }
    await prepare(docker, BINDS)
    assert len(docker.scripts()) == 1  # prepared already: no second helper container


async def test_an_existing_folder_left_to_root_is_repaired_by_the_next_spawn():
    docker = FakeDocker(existing={"lab-group-vision"})  # e.g. a hub that died between create and chown
    assert await prepare(docker, BINDS) == []
    assert "chown 1000:100 /shared/vision" in docker.scripts()[0]


async def test_a_failed_preparation_says_so_and_the_next_spawn_tries_again():
    docker = FakeDocker(status=1)
    with pytest.raises(SpawnException) as failed:
        await prepare(docker, BINDS)
    assert failed.value.status_code == 500
    assert "Could not prepare the shared folders lab-group-vision; the next start tries again" in failed.value.message
    assert "Operation not permitted" in failed.value.log_message
    docker.status = 0
    await prepare(docker, BINDS)
    assert len(docker.scripts()) == 2


async def test_no_group_no_helper_container():
    docker = FakeDocker()
    assert await prepare(docker, {}) == []
    assert docker.calls == []
