"""After a hub crash or restart: how the ledger and Docker's containers are made to agree (pure)."""

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from labgpu.gpus.allocator import Allocation
from labgpu.gpus.reconcile import reconcile
from labgpu.labels import LABEL_GPUS, LABEL_HUB, LABEL_SERVER, LABEL_USER

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(hours=2)


def container(cid, user, gpus, *, server="", state="running", hub="labgpu", created="2026-11-24T09:00:00Z"):
    return {
        "id": cid,
        "state": state,
        "created": created,
        LABEL_USER: user,
        LABEL_SERVER: server,
        LABEL_GPUS: ",".join(gpus),
        LABEL_HUB: hub,
    }


def alloc(user, gpus, server="", since=EARLIER):
    return Allocation(user, server, tuple(gpus), since)


def test_running_container_unknown_to_the_ledger_is_adopted():
    plan = reconcile([], [container("c1", "alice", ["GPU-a", "GPU-b"])], hub_id="labgpu", now=NOW)
    assert [(a.user, a.gpu_uuids, a.container_id) for a in plan.adoptions] == [("alice", ("GPU-a", "GPU-b"), "c1")]
    assert not plan.releases and not plan.stops


def test_allocation_whose_container_is_gone_or_exited_is_released():
    plan = reconcile(
        [alloc("alice", ["GPU-a"]), alloc("bob", ["GPU-b"])],
        [container("c2", "bob", ["GPU-b"], state="exited")],
        hub_id="labgpu",
        now=NOW,
    )
    assert sorted(r.user for r in plan.releases) == ["alice", "bob"]
    assert all(r.reason == "reconcile: no running container" for r in plan.releases)


def test_agreeing_ledger_and_container_change_nothing():
    plan = reconcile([alloc("alice", ["GPU-a"], "lab")], [container("c1", "alice", ["GPU-a"], server="lab")], now=NOW)
    assert plan.empty and plan.kept == (("alice", "lab"),)


def test_a_spawn_still_starting_keeps_its_gpus_within_the_grace_period():
    fresh = alloc("carol", ["GPU-c"], since=NOW - timedelta(seconds=5))
    plan = reconcile([fresh], [], now=NOW, pending_grace=timedelta(seconds=60))
    assert plan.empty and plan.kept == (("carol", ""),)
    # ... and a container that grabbed carol's GPU meanwhile is the one that goes
    plan = reconcile([fresh], [container("x", "mallory", ["GPU-c"])], now=NOW, pending_grace=timedelta(seconds=60))
    assert [s.container_id for s in plan.stops] == ["x"] and not plan.adoptions


def test_two_containers_on_one_gpu_the_ledger_holder_keeps_it_and_the_other_is_stopped():
    plan = reconcile(
        [alloc("alice", ["GPU-a"])],
        [
            container("c-bob", "bob", ["GPU-a"], created="2026-11-24T08:00:00Z"),
            container("c-alice", "alice", ["GPU-a"]),
        ],
        now=NOW,
    )
    assert [s.container_id for s in plan.stops] == ["c-bob"]
    assert "GPU-a is held by alice" in plan.stops[0].reason
    assert not plan.adoptions and plan.kept == (("alice", ""),)


def test_two_unrecorded_containers_on_one_gpu_the_older_one_wins():
    plan = reconcile(
        [],
        [
            container("young", "bob", ["GPU-a"], created="2026-11-24T10:00:00Z"),
            container("old", "alice", ["GPU-a", "GPU-b"], created="2026-11-24T08:00:00Z"),
        ],
        now=NOW,
    )
    assert [a.container_id for a in plan.adoptions] == ["old"]
    assert [s.container_id for s in plan.stops] == ["young"]
    assert any("GPU-a" in c for c in plan.conflicts)


def test_container_running_on_other_gpus_than_recorded_the_container_wins():
    plan = reconcile([alloc("alice", ["GPU-a"])], [container("c1", "alice", ["GPU-b"])], now=NOW)
    assert [(r.user, r.gpu_uuids) for r in plan.releases] == [("alice", ("GPU-a",))]
    assert [(a.user, a.gpu_uuids) for a in plan.adoptions] == [("alice", ("GPU-b",))]
    assert plan.conflicts


def test_other_hubs_containers_and_gpu_less_workspaces_are_left_alone():
    plan = reconcile(
        [],
        [container("other", "alice", ["GPU-a"], hub="another-hub"), container("cpu", "bob", [])],
        hub_id="labgpu",
        now=NOW,
    )
    assert plan.empty


def test_gpus_missing_from_the_inventory_are_reported_not_recorded():
    plan = reconcile([], [container("c1", "alice", ["GPU-a", "GPU-gone"])], known_gpus={"GPU-a"}, now=NOW)
    assert plan.adoptions[0].gpu_uuids == ("GPU-a",)
    assert any("GPU-gone" in c for c in plan.conflicts)


def test_nested_labels_form_is_accepted():
    docker_form = {"id": "c1", "state": "running", "labels": {LABEL_USER: "alice", LABEL_GPUS: "GPU-a"}}
    plan = reconcile([], [docker_form], now=NOW)
    assert plan.adoptions[0].gpu_uuids == ("GPU-a",)


GPU_IDS = [f"GPU-{i}" for i in range(6)]
USERS = ["alice", "bob", "carol", "dan"]


@st.composite
def worlds(draw):
    # a ledger that never holds a GPU twice (the invariant the database enforces)
    allocations, taken = [], set()
    for user in draw(st.lists(st.sampled_from(USERS), unique=True, max_size=4)):
        gpus = [
            g for g in draw(st.lists(st.sampled_from(GPU_IDS), unique=True, min_size=1, max_size=3)) if g not in taken
        ]
        if gpus:
            taken.update(gpus)
            age = draw(st.sampled_from([timedelta(seconds=5), timedelta(hours=1)]))
            allocations.append(alloc(user, gpus, since=NOW - age))
    containers = []
    for i, user in enumerate(draw(st.lists(st.sampled_from(USERS), max_size=6))):
        gpus = draw(st.lists(st.sampled_from(GPU_IDS), unique=True, max_size=3))
        state = draw(st.sampled_from(["running", "running", "exited", "paused", "created"]))
        created = f"2026-11-24T0{draw(st.integers(0, 9))}:00:00Z"
        containers.append(container(f"c{i}", user, gpus, state=state, created=created))
    return allocations, containers


@settings(max_examples=200, deadline=None)
@given(worlds(), st.sampled_from([timedelta(0), timedelta(seconds=60)]))
def test_after_applying_the_plan_no_gpu_is_held_twice_and_ledger_matches_docker(world, grace):
    allocations, containers = world
    plan = reconcile(allocations, containers, now=NOW, pending_grace=grace)
    ledger = {(a.user, a.server): set(a.gpu_uuids) for a in allocations}
    for release in plan.releases:
        assert ledger.pop((release.user, release.server)) == set(release.gpu_uuids)
    for adoption in plan.adoptions:
        assert (adoption.user, adoption.server) not in ledger
        ledger[(adoption.user, adoption.server)] = set(adoption.gpu_uuids)
    held = [g for gpus in ledger.values() for g in gpus]
    assert len(held) == len(set(held)), "a GPU is held twice"
    stopped = {s.container_id for s in plan.stops}
    survivors = [
        c for c in containers if c["state"] in ("running", "paused") and c["id"] not in stopped and c[LABEL_GPUS]
    ]
    assert len({(c[LABEL_USER], c[LABEL_SERVER]) for c in survivors}) == len(survivors)
    for c in survivors:  # every container left running is recorded with exactly its GPUs
        assert ledger.get((c[LABEL_USER], c[LABEL_SERVER])) == set(c[LABEL_GPUS].split(","))
    running_keys = {(c[LABEL_USER], c[LABEL_SERVER]) for c in survivors}
    for key in ledger:  # every allocation left has a container, or is a spawn still in its grace period
        if key not in running_keys:
            assert key in plan.kept and grace > timedelta(0)
