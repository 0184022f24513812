"""GPUDockerSpawner's own methods, without Docker or a running hub: the spawn page it offers,
how it refuses options over quota, the container it asks Docker for, what it persists, and
that its ledger reads stay off the hub's event loop.

Spawners are made the way JupyterHub's own tests make them: a real (in-memory) hub database
with the user, their groups and their server, and ``User.get_spawner``. Docker is a recorder.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from docker.errors import NotFound
from jupyterhub import orm
from jupyterhub.objects import Hub
from jupyterhub.spawner import SpawnException
from jupyterhub.user import User
from traitlets.config import Config

import labgpu.quota.store as quota_store
from labgpu.hub import resources as hub_resources
from labgpu.hub import shared_folders
from labgpu.hub.containers import render_templates
from labgpu.hub.spawner import GPUDockerSpawner
from labgpu.labels import LABEL_GPUS, LABEL_HUB, LABEL_KIND, LABEL_MANAGED, LABEL_SERVER, LABEL_USER

DATA = Path(__file__).parent.parent / "data"
G = 1024**3

QUOTAS = """
images:
  pytorch: {image: "lab/pytorch:2", display: "PyTorch workspace"}
  tf: {image: "lab/tf:2", display: "TensorFlow"}
defaults: {gpus: 0, gpus_total: 0, memory: 4G, cpus: 2, shm: 1G, pids: 1024, images: [pytorch], named_servers: 1}
groups:
  vision-lab: {gpus: 2, gpus_total: 3, memory: 16G, cpus: 8, images: [pytorch, tf], shared_volume: true}
fairshare: {allow_queue: true}
"""


class RecordingDocker:
    """Stands in for DockerSpawner's ``docker(method, ...)`` and ``client``: records every call,
    answers the few the spawner reads (a 4-CPU host; no volumes yet)."""

    def __init__(self, host_cpus: int = 4):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.threads: set[str] = set()
        self.host_cpus = host_cpus

    async def __call__(self, method, *args, **kwargs):
        self.calls.append((method, args, kwargs))
        if method == "info":
            return {"NCPU": self.host_cpus}
        if method == "inspect_image":
            return {"Id": "sha256:0123", "Config": {"Cmd": ["start-singleuser.sh"]}}
        if method == "inspect_volume":
            raise NotFound("no such volume")
        if method == "create_container":
            return {"Id": f"c{len(self.calls)}"}
        if method == "wait":
            return {"StatusCode": 0}
        return None

    @staticmethod
    def create_host_config(**kwargs):
        return dict(kwargs)

    def made(self, method):
        return [kwargs for m, _, kwargs in self.calls if m == method]


@pytest.fixture
def hub_db():
    return orm.new_session_factory("sqlite:///:memory:")()


@pytest.fixture
def quotas(tmp_path):
    path = tmp_path / "quotas.yaml"
    path.write_text(QUOTAS)
    return str(path)


@pytest.fixture
def make_spawner(hub_db, monkeypatch):
    """``make_spawner(name="", groups=(), **traits)``: a spawner of alice's server ``name``."""
    recorder = RecordingDocker()
    monkeypatch.setattr(GPUDockerSpawner, "client", recorder)
    monkeypatch.setattr(GPUDockerSpawner, "_host_cpus", None)
    monkeypatch.setattr(shared_folders, "_prepared_folders", set())  # a fresh hub process
    monkeypatch.setattr(shared_folders, "_linked_homes", set())

    def make(name: str = "", groups: tuple[str, ...] = (), **traits):
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
            setattr(config.GPUDockerSpawner, trait, value)
        user = User(orm_user, {"spawner_class": GPUDockerSpawner, "config": config, "hub": Hub()})
        for existing in orm_user.orm_spawners:  # as the hub does at start: every server's spawner
            user.spawners[existing].docker = recorder
        spawner = user.get_spawner(name)
        spawner.recorder = recorder
        return spawner

    return make


# --- the spawn page -----------------------------------------------------------------------------


async def test_without_a_policy_there_is_no_options_form_and_options_are_refused(make_spawner):
    spawner = make_spawner()
    assert await spawner.get_options_form() == ""
    with pytest.raises(SpawnException) as refused:
        await spawner.apply_user_options(spawner, {"gpus": 1})
    assert refused.value.status_code == 400
    assert refused.value.log_message == "This hub takes no spawn options (no quota policy is configured)."


async def test_the_options_form_offers_what_the_users_group_allows(make_spawner, quotas):
    alice = make_spawner(groups=("vision-lab",), quota_files=[quotas])
    form = await alice.get_options_form()
    assert 'name="gpus"' in form and 'value="2"' in form
    assert "TensorFlow" in form and "PyTorch workspace" in form
    assert "16G" in form


async def test_a_user_outside_the_group_is_offered_only_the_defaults(make_spawner, quotas):
    form = await make_spawner(quota_files=[quotas]).get_options_form()
    assert "TensorFlow" not in form
    assert "Your limits: no GPUs; 4G memory; 2 CPUs; 1G /dev/shm." in form


async def test_the_form_counts_gpus_held_by_the_users_other_servers(make_spawner, quotas, ledger_url):
    hub_resources.ledger(ledger_url).allocate("alice", "train", 2)
    spawner = make_spawner(groups=("vision-lab",), quota_files=[quotas], ledger_url=ledger_url)
    assert "Your other servers hold 2 GPUs of your 3 GPUs" in await spawner.get_options_form()


async def test_a_users_groups_are_the_policys_from_hub_groups_and_members_lists(make_spawner, tmp_path):
    quotas = tmp_path / "members.yaml"
    quotas.write_text(QUOTAS.replace("groups:\n", "groups:\n  nlp: {members: [alice], gpus: 1}\n"))
    alice = make_spawner(groups=("vision-lab", "staff"), quota_files=[str(quotas)])
    assert alice.user_groups() == ("nlp", "vision-lab")  # "staff" is no group of the policy
    assert (await alice.resolve_limits()).groups == ("nlp", "vision-lab")


# --- user_options against the quota -------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"gpus": 3}, "You asked for 3 GPUs, but your limit is 2 GPUs per server"),
        ({"privileged": True}, "Unknown spawn option 'privileged'"),
    ],
)
async def test_options_over_quota_are_refused_with_http_400_naming_the_limit(make_spawner, quotas, options, message):
    spawner = make_spawner(groups=("vision-lab",), quota_files=[quotas])
    with pytest.raises(SpawnException) as refused:
        await spawner.apply_user_options(spawner, options)
    assert refused.value.status_code == 400
    assert message in refused.value.log_message
    assert spawner.spawn_request is None  # nothing was applied


async def test_gpus_on_a_hub_without_a_ledger_are_refused(make_spawner, quotas):
    spawner = make_spawner(groups=("vision-lab",), quota_files=[quotas])
    with pytest.raises(SpawnException) as refused:
        await spawner.apply_user_options(spawner, {"gpus": 1})
    assert refused.value.log_message == "This hub has no GPUs to hand out; start a server with 0 GPUs."


async def test_a_named_server_beyond_the_quota_is_refused(make_spawner, quotas, hub_db):
    make_spawner(name="one", quota_files=[quotas]).orm_spawner.server = orm.Server()  # running
    hub_db.commit()
    second = make_spawner(name="two", quota_files=[quotas])
    with pytest.raises(SpawnException) as refused:
        await second.apply_user_options(second, {})
    assert refused.value.log_message == (
        "You may run 1 named server(s) besides your default one, and 1 are running. Stop one first."
    )


async def test_accepted_options_set_the_image_and_limits(make_spawner, quotas):
    spawner = make_spawner(groups=("vision-lab",), quota_files=[quotas], start_timeout=120)
    await spawner.apply_user_options(spawner, {"image": "tf", "memory": "8G", "cpus": 4})
    assert (spawner.image, spawner.mem_limit, spawner.cpu_limit) == ("lab/tf:2", 8 * G, 4)
    assert spawner.start_timeout == 120  # no GPUs asked: no queue wait on top


async def test_a_stale_image_or_memory_guarantee_does_not_survive_into_a_spawn_whose_policy_drops_them(
    make_spawner, tmp_path
):
    quotas = tmp_path / "quotas.yaml"
    quotas.write_text(QUOTAS.replace("memory: 16G,", "memory: {limit: 16G, guarantee: 8G},"))
    spawner = make_spawner(groups=("vision-lab",), quota_files=[str(quotas)], image="lab/configured:1")
    await spawner.apply_user_options(spawner, {"image": "tf"})
    assert (spawner.image, spawner.mem_guarantee) == ("lab/tf:2", 8 * G)

    # The admin drops the image list and the guarantee: the next spawn of this same spawner
    # gets the configured image and no guarantee, not what the last policy gave.
    quotas.write_text("defaults: {memory: 4G, cpus: 2}\n# now without images or guarantees\n")
    await spawner.apply_user_options(spawner, {})
    assert (spawner.image, spawner.mem_guarantee) == ("lab/configured:1", None)
    assert spawner.workspace_spec({}, None).mem_reservation is None


async def test_a_gpu_spawn_that_may_queue_gets_the_queue_wait_on_top_of_start_timeout(make_spawner, quotas, ledger_url):
    spawner = make_spawner(
        groups=("vision-lab",), quota_files=[quotas], ledger_url=ledger_url, start_timeout=120, gpu_queue_timeout=600
    )
    await spawner.apply_user_options(spawner, {"gpus": 1})
    assert spawner.start_timeout == 720
    await spawner.apply_user_options(spawner, {"gpus": 0})  # a second spawn does not add it twice
    assert spawner.start_timeout == 120


# --- the container --------------------------------------------------------------------------------


async def test_create_object_asks_docker_for_the_hardened_container_of_the_granted_options(make_spawner, quotas):
    async def admin_host_config(spawner):
        return {"binds": ["/srv/data/{username}:/data:ro"]}

    spawner = make_spawner(
        groups=("vision-lab",),
        quota_files=[quotas],
        extra_create_kwargs={"working_dir": "/home/jovyan/{username}"},
        extra_host_config=admin_host_config,
    )
    await spawner.apply_user_options(spawner, {"memory": "8G", "cpus": 8})
    spawner.recorder.host_cpus = 4
    await spawner.create_object()

    create = spawner.recorder.made("create_container")[-1]  # after the group share's chown container
    assert create["image"] == "lab/pytorch:2"
    assert create["name"] == "jupyter-alice"
    assert create["user"] == "1000:100"
    assert create["working_dir"] == "/home/jovyan/alice"  # the admin's template, rendered
    assert create["labels"] == {
        LABEL_MANAGED: "true",
        LABEL_HUB: "lab-a",
        LABEL_USER: "alice",
        LABEL_SERVER: "",
        LABEL_GPUS: "",
    }
    assert create["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    host = create["host_config"]
    assert host["mem_limit"] == 8 * G
    assert (host["cpu_period"], host["cpu_quota"]) == (100_000, 400_000)  # 8 CPUs asked, the host has 4
    assert host["memswap_limit"] == host["mem_limit"]  # no swap on top
    assert host["binds"] == {
        "labgpu-home-alice": {"bind": "/home/jovyan", "mode": "rw"},
        "lab-a-group-vision-lab": {"bind": "/shared/vision-lab", "mode": "rw"},
        "/srv/data/alice": {"bind": "/data", "mode": "ro"},
    }
    assert (host["cap_drop"], host["privileged"], host["security_opt"]) == (["ALL"], False, ["no-new-privileges:true"])


async def test_the_group_share_is_created_on_first_use_and_handed_to_the_workspace_user(make_spawner, quotas):
    spawner = make_spawner(groups=("vision-lab",), quota_files=[quotas])
    await spawner.apply_user_options(spawner, {})
    await spawner.create_object()
    created = [(args, kwargs) for method, args, kwargs in spawner.recorder.calls if method == "create_volume"]
    assert created == [(("lab-a-group-vision-lab",), {"labels": {LABEL_MANAGED: "true", LABEL_KIND: "group-share"}})]
    chown = spawner.recorder.made("create_container")[0]
    assert "chown 1000:100 /shared/vision-lab && chmod 2775 /shared/vision-lab" in chown["command"][2]
    assert chown["host_config"]["network_mode"] == "none"


async def test_the_docker_host_is_asked_for_its_cpus_once_per_hub(make_spawner, quotas):
    first, second = make_spawner(quota_files=[quotas]), make_spawner(name="two", quota_files=[quotas])
    for spawner in (first, second):
        await spawner.apply_user_options(spawner, {})
        await spawner.create_object()
    assert [m for m, _, _ in first.recorder.calls].count("info") == 1


def test_admin_templates_render_every_string_and_leave_a_literal_brace_alone():
    namespace = {"username": "alice"}
    assert render_templates({"{username}": ["a {b", ("{username}",)], "n": 3}, namespace) == {
        "alice": ["a {b", ("alice",)],
        "n": 3,
    }


# --- state ------------------------------------------------------------------------------------------


def test_state_keeps_the_container_and_nothing_the_ledger_owns(make_spawner):
    spawner = make_spawner()
    spawner.object_id, spawner.object_name = "abc123", "jupyter-alice"
    spawner.gpu_uuids = ("GPU-aaaa",)
    state = spawner.get_state()
    assert state == {"object_id": "abc123", "object_name": "jupyter-alice"}

    restarted = make_spawner(name="again")
    restarted.load_state(state)
    assert (restarted.container_id, restarted.container_name) == ("abc123", "jupyter-alice")
    assert restarted.gpu_uuids == ()


async def test_a_started_workspace_records_what_it_runs_on_until_it_stops(make_spawner, ledger_url):
    spawner = make_spawner(ledger_url=ledger_url)
    spawner.object_id, spawner.gpu_uuids = "c42", ("GPU-aaaa",)
    await spawner.record_session()
    (session,) = hub_resources.session_store(ledger_url).sessions()
    assert (session.user, session.container_id, session.image_digest, session.gpu_uuids) == (
        "alice",
        "c42",
        "sha256:0123",  # no registry digest: the image id
        ("GPU-aaaa",),
    )
    await spawner.end_session("stopped")
    (session,) = hub_resources.session_store(ledger_url).sessions()
    assert session.ended_at is not None and session.end_reason == "stopped"


# --- off the event loop --------------------------------------------------------------------------


async def test_ledger_reads_run_off_the_event_loop(make_spawner, quotas, ledger_url, monkeypatch):
    ledger = hub_resources.ledger(ledger_url)
    ledger.allocate("alice", "train", 1)
    threads = []
    allocations = ledger.allocations

    def recording_allocations():
        threads.append(threading.current_thread())
        return allocations()

    monkeypatch.setattr(ledger, "allocations", recording_allocations)
    spawner = make_spawner(quota_files=[quotas], ledger_url=ledger_url)
    assert await spawner.gpus_held_elsewhere() == 1
    assert threads and threading.main_thread() not in threads
    assert all(t.name.startswith("labgpu-ledger") for t in threads)


async def test_quota_files_are_reread_off_the_event_loop_and_any_failed_reload_is_logged(
    make_spawner, quotas, monkeypatch, caplog
):
    spawner = make_spawner(quota_files=[quotas])
    assert spawner.policy_store is not None  # loaded once, as at hub start
    threads = []

    def crashing_load(paths):
        threads.append(threading.current_thread())
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(quota_store, "load_policy", crashing_load)
    Path(quotas).write_text(QUOTAS + "# edited\n")
    limits = await spawner.resolve_limits()
    assert threads and threading.main_thread() not in threads
    assert all(t.name.startswith("labgpu-ledger") for t in threads)
    assert limits.cpus == 2  # the last good policy stays in force
    assert "could not be loaded (OverflowError: int too large to convert to float)" in caplog.text
    assert "the last good policy stays in force" in caplog.text


async def test_the_queue_tunables_come_from_the_spawners_config(make_spawner, ledger_url):
    spawner = make_spawner(
        ledger_url=ledger_url,
        gpu_queue_poll_interval=2.5,
        gpu_queue_abandon_after=60.0,
        gpu_queue_progress_interval=1.0,
    )
    queue = spawner.shared_gpu_queue()
    assert (queue.poll_interval, queue.abandon_after, queue.progress_interval) == (2.5, 60.0, 1.0)


def test_a_queue_interval_of_zero_is_refused(make_spawner):
    with pytest.raises(Exception, match="gpu_queue_poll_interval must be more than 0 seconds"):
        make_spawner(gpu_queue_poll_interval=0.0)


async def test_stopping_a_server_that_waits_for_gpus_takes_it_out_of_the_queue(make_spawner, quotas, ledger_url):
    ledger = hub_resources.ledger(ledger_url)
    ledger.allocate("zed", "", 8)
    spawner = make_spawner(groups=("vision-lab",), quota_files=[quotas], ledger_url=ledger_url)
    await spawner.apply_user_options(spawner, {"gpus": 1})
    starting = asyncio.create_task(spawner.start())
    queue = spawner.shared_gpu_queue()
    deadline = asyncio.get_running_loop().time() + 5
    while not await asyncio.to_thread(queue.store.waiting_for, "alice", ""):
        assert asyncio.get_running_loop().time() < deadline, "alice's spawn never joined the GPU queue"
        await asyncio.sleep(0.01)

    await spawner.stop()
    with pytest.raises(SpawnException) as failed:
        await asyncio.wait_for(starting, 5)
    assert "Your place in the GPU queue was taken away (server stopped while waiting)" in failed.value.log_message
    assert queue.store.waiting() == [] and ledger.allocation_for("alice") is None
