"""The hub's groups follow the quota files' member lists (add *and* remove), in JupyterHub's own
ORM on a real (in-memory) hub database, and a group the files list members for is theirs alone."""

from __future__ import annotations

import asyncio
import logging

import pytest
from jupyterhub import orm

from labgpu.hub.group_sync import GroupSync, MembershipChange, membership_changes, sync_hub_groups
from labgpu.quota import PolicyStore, listed_members, load_policy_text, resolve, user_groups

POLICY = """
defaults: {cpus: 1}
groups:
  vision-lab: {members: [alice, bob], cpus: 8}
  nlp-lab: {members: [], cpus: 4}
  oauth-only: {cpus: 2}
"""


@pytest.fixture
def db():
    session = orm.new_session_factory("sqlite://")()
    for name in ("alice", "bob", "carol"):
        session.add(orm.User(name=name))
    session.commit()
    yield session
    session.close()


def members(db, group: str) -> list[str]:
    found = orm.Group.find(db, group)
    return sorted(u.name for u in found.users) if found else []


def put(db, group: str, *users: str) -> None:
    found = orm.Group.find(db, group) or orm.Group(name=group)
    db.add(found)
    found.users = [orm.User.find(db, u) for u in users]
    db.commit()


def test_a_group_whose_members_the_files_list_is_theirs_alone():
    policy = load_policy_text(POLICY)
    assert listed_members(policy) == {"vision-lab": ("alice", "bob"), "nlp-lab": ()}
    # carol is in vision-lab and nlp-lab in the hub (left from before an edit): that gives nothing.
    assert user_groups(policy, "carol", ["vision-lab", "nlp-lab"]) == ()
    assert resolve(policy, "carol", ["vision-lab"]).cpus == 1
    # A group without a members list still comes from the hub (e.g. OAuth groups).
    assert user_groups(policy, "carol", ["oauth-only"]) == ("oauth-only",)
    assert user_groups(policy, "alice", []) == ("vision-lab",)


def test_membership_changes_add_and_remove_only_in_listed_groups():
    wanted = {"vision-lab": ["alice", "bob"], "nlp-lab": []}
    current = {"vision-lab": ["alice", "carol"], "nlp-lab": ["dave"], "oauth-only": ["erin"]}
    assert membership_changes(wanted, current) == [
        MembershipChange("nlp-lab", (), ("dave",)),
        MembershipChange("vision-lab", ("bob",), ("carol",)),
    ]
    # Someone listed without a hub account yet is added once they have one.
    assert membership_changes(wanted, current, existing_users={"alice", "carol"}) == [
        MembershipChange("nlp-lab", (), ("dave",)),
        MembershipChange("vision-lab", (), ("carol",)),
    ]
    assert str(MembershipChange("vision-lab", ("bob",), ("carol",))) == "group vision-lab: added bob; removed carol"


def test_sync_makes_the_hubs_groups_match_the_files(db):
    put(db, "vision-lab", "alice", "carol")  # carol was removed from the file
    put(db, "oauth-only", "carol")
    changes = sync_hub_groups(db, load_policy_text(POLICY))
    assert changes == [MembershipChange("vision-lab", ("bob",), ("carol",))]
    assert members(db, "vision-lab") == ["alice", "bob"]
    assert orm.Group.find(db, "nlp-lab") is not None and members(db, "nlp-lab") == []  # created, empty
    assert members(db, "oauth-only") == ["carol"]  # not listed in the files: left alone
    assert sync_hub_groups(db, load_policy_text(POLICY)) == []  # nothing more to do


def test_sync_matches_names_as_the_hub_normalizes_them(db):
    policy = load_policy_text("groups:\n  vision-lab: {members: [Alice]}\n")
    sync_hub_groups(db, policy, normalize=str.lower)
    assert members(db, "vision-lab") == ["alice"]


def test_the_watcher_reloads_an_edited_file_and_removes_the_ex_member(db, tmp_path, caplog):
    quotas = tmp_path / "quotas.yaml"
    quotas.write_text(POLICY)
    store = PolicyStore([str(quotas)])
    store.load()
    watcher = GroupSync(store, lambda: db, interval=0.01, logger=logging.getLogger("test-hub"))
    asyncio.run(watcher.tick())
    assert members(db, "vision-lab") == ["alice", "bob"]
    quotas.write_text(POLICY.replace("[alice, bob]", "[bob]") + "\n")
    with caplog.at_level(logging.INFO, "test-hub"):
        assert asyncio.run(watcher.tick()) == [MembershipChange("vision-lab", (), ("alice",))]
    assert members(db, "vision-lab") == ["bob"]
    assert f"Quota policy reloaded from {quotas}" in caplog.text
    assert "Hub groups follow the quota files: group vision-lab: removed alice" in caplog.text
    # A bad edit keeps the last good policy, says so, and membership stays.
    quotas.write_text("groups: {vision-lab: {members: [alice], cpus: -1}}\n")
    with caplog.at_level(logging.INFO, "test-hub"):
        assert asyncio.run(watcher.tick()) == []
    assert "Quota files changed but are invalid; the last good policy stays in force" in caplog.text
    assert members(db, "vision-lab") == ["bob"]
