"""Disk quotas: the quota file's `disk` (a home) and `shared_disk` (a group's folder), the sizes
the service records, the refusal a user reads and the line the admin reads."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from labgpu.db.disk_store import VolumeSizeStore
from labgpu.quota import PolicyError, load_policy_text, options_form, resolve
from labgpu.quota.volumes import VolumeSize, disk_note, disk_refusal
from labgpu.services.disk_usage import home_owner, measure_volumes, over_quota

M = 1024**2
NOON = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)

POLICY = """
images: {pytorch: {image: "labgpu/workspace:local"}}
defaults: {disk: 50M}
groups:
  vision: {members: [bob], disk: 2G, shared_volume: true, shared_disk: 100M}
  nlp: {members: [bob], shared_volume: datasets}
users:
  carol: {disk: 1P}
"""


def size(volume: str, mib: float) -> VolumeSize:
    return VolumeSize(volume, int(mib * M), NOON)


@pytest.fixture
def policy():
    return load_policy_text(POLICY, "quotas.yaml")


def test_disk_limits_the_home_like_any_limit_and_shared_disk_a_groups_folder(policy):
    alice, bob = resolve(policy, "alice"), resolve(policy, "bob")
    assert (alice.disk, alice.sources["disk"]) == (50 * M, "defaults")
    assert (bob.disk, bob.sources["disk"]) == (2048 * M, "groups.vision")  # the most generous group
    assert bob.shared_disks == {"vision": 100 * M}  # a group's own, not inherited by other folders
    assert resolve(load_policy_text("{}", "q.yaml"), "alice").disk is None  # no limit unless the file sets one


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("defaults: {disk: 1K}", "quotas.yaml:1:18: defaults.disk must be between 1M and 1P (got 1K)"),
        ("groups: {g: {shared_disk: lots}}", "quotas.yaml:1:27: groups.g.shared_disk must be a size like 16G"),
        ("users: {alice: {shared_disk: 1G}}", "quotas.yaml:1:17: unknown key 'shared_disk' in users.alice"),
    ],
)
def test_a_bad_disk_quota_is_refused_where_it_is_written(text, message):
    with pytest.raises(PolicyError) as refused:
        load_policy_text(text, "quotas.yaml")
    assert any(line.startswith(message) for line in refused.value.errors), refused.value.errors


def test_a_home_over_its_quota_is_refused_with_the_size_the_limit_and_its_source(policy):
    alice = resolve(policy, "alice")
    assert disk_refusal(alice, size("h", 49), {}) is None
    assert disk_refusal(alice, None, {}) is None  # not measured yet: nothing to hold against her
    assert disk_refusal(alice, size("h", 80.2), {}) == (
        "Your home uses 80.2M of your 50M disk quota (set by defaults): delete files (from a server of yours "
        "that is still running, or ask the hub's admin), then start again."
    )


def test_a_shared_folder_over_its_quota_refuses_its_members(policy):
    bob = resolve(policy, "bob")
    folders = {"vision": size("f", 120), "nlp": size("d", 5000)}  # nlp's folder has no quota
    assert disk_refusal(bob, size("h", 10), folders) == (
        "The shared folder of your group vision uses 120M of its 100M disk quota (set by groups.vision.shared_disk): "
        "its members must delete files there (from a running server, or ask the hub's admin), then start again."
    )


def test_the_spawn_page_says_how_full_the_home_and_folders_are(policy):
    bob = resolve(policy, "bob")
    note = disk_note(bob, size("h", 12.5), {"vision": size("f", 30), "nlp": size("d", 1)})
    assert note == (
        "Disk: your home uses 12.5M of your 2G quota; the shared folder nlp 1M; "
        "the shared folder vision 30M of its 100M quota (measured 2026-12-03 12:00 UTC)."
    )
    assert disk_note(bob, None, {}) == ""
    form = options_form(bob, disk_note=note)
    assert '<p class="help-block labgpu-disk">Disk: your home uses 12.5M of your 2G quota;' in form


def test_the_store_keeps_the_last_round_and_forgets_gone_volumes_of_this_hub_only(ledger_db):
    clock = iter([NOON, NOON.replace(hour=13)])
    with VolumeSizeStore(ledger_db, clock=lambda: next(clock)) as store:
        prefixes = ("lab-home-", "lab-group-")
        store.record({"lab-home-alice": 10, "lab-home-bob": 20, "other-home-x": 5}, prefixes)
        store.record({"lab-home-alice": 30}, prefixes)  # bob's home was removed
        assert store.sizes() == {
            "lab-home-alice": VolumeSize("lab-home-alice", 30, NOON.replace(hour=13)),
            "other-home-x": VolumeSize("other-home-x", 5, NOON),  # another hub's: not ours to forget
        }
        assert store.sizes(["lab-home-alice", "lab-home-nobody"]).keys() == {"lab-home-alice"}


class FakeDocker:
    class api:  # docker-py's low-level client, as docker.from_env().api
        @staticmethod
        def df():
            return {
                "Volumes": [
                    {"Name": "lab-home-alice", "UsageData": {"Size": 80 * M}},
                    {"Name": "lab-home-a-2eb", "UsageData": {"Size": 1}},
                    {"Name": "lab-group-vision", "UsageData": {"Size": 120 * M}},
                    {"Name": "lab-home-unsized", "UsageData": {"Size": -1}},  # Docker could not size it
                    {"Name": "other-home-alice", "UsageData": {"Size": 7}},
                    {"Name": "pgdata", "UsageData": {"Size": 9}},
                ]
            }


def test_the_service_measures_this_hubs_homes_and_folders_with_dockers_df():
    assert measure_volumes(FakeDocker(), "lab") == {
        "lab-home-alice": 80 * M,
        "lab-home-a-2eb": 1,
        "lab-group-vision": 120 * M,
    }
    assert home_owner("lab-home-a-2eb", "lab") == "a.b"  # DockerSpawner's escaping, undone
    assert home_owner("lab-group-vision", "lab") is None


def test_the_admin_is_told_which_volumes_are_over_quota(policy):
    sizes = {name: VolumeSize(name, n, NOON) for name, n in measure_volumes(FakeDocker(), "lab").items()}
    lines = over_quota(sizes, policy, "lab", groups_of=lambda user: ())
    assert lines == [
        "alice's home lab-home-alice is over quota; their next spawn is refused: Your home uses 80M of your 50M "
        "disk quota (set by defaults): delete files (from a server of yours that is still running, or ask the "
        "hub's admin), then start again.",
        "group vision's shared folder lab-group-vision uses 120M, over its shared_disk of 100M: its members' "
        "spawns are refused until they delete files there",
    ]
