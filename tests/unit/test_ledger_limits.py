"""Every GPU limit is checked inside the ledger's allocation transaction, whichever path led
there: GPUs per server, the user's total across servers, and the pool of the group an
allocation is charged to (recorded with it, counted from the ledger itself). On SQLite and
PostgreSQL alike (``ledger_db``)."""

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from labgpu.db.engine import database_url
from labgpu.db.ledger import Ledger
from labgpu.gpus.allocator import GroupPoolFull, NotEnoughGpus, ServerLimitExceeded, UserTotalExceeded
from labgpu.gpus.inventory import ReplayInventory

DATA = Path(__file__).parent.parent / "data"


class Clock:
    def __init__(self):
        self.now = datetime(2026, 11, 24, 9, 14, tzinfo=UTC)

    def __call__(self):
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def path(ledger_db):
    path = ledger_db
    with Ledger(path, clock=Clock()) as ledger:
        ledger.sync_inventory(ReplayInventory(DATA / "a100x8-two-nvlink-islands.json").gpus())
    return path


@pytest.fixture
def ledger(path):
    with Ledger(path, clock=Clock()) as ledger:
        yield ledger


def vision(ledger, user, server="", n=2, pool=4):
    return ledger.allocate(user, server, n, group="vision-lab", pool=pool)


def test_a_groups_pool_holds_across_its_members_although_gpus_are_free(ledger):
    vision(ledger, "alice")
    vision(ledger, "bob")
    with pytest.raises(GroupPoolFull) as refused:
        vision(ledger, "carol", n=1)
    assert str(refused.value) == (
        "You asked for 1 GPU, but vision-lab's pool of 4 GPUs is in use: alice 2, bob 2. "
        "Wait until a member of vision-lab stops a server."
    )
    assert isinstance(refused.value, NotEnoughGpus)  # a spawn may wait for it in the queue
    assert ledger.allocation_for("carol") is None
    assert sum(len(a.gpu_uuids) for a in ledger.allocations()) == 4  # 4 of the 8 GPUs stay free
    # Outside the group, the free GPUs are granted as before.
    assert len(ledger.allocate("dave", "", 4).gpu_uuids) == 4
    # A member's release makes room in the pool.
    ledger.release("bob")
    assert len(vision(ledger, "carol", n=2).gpu_uuids) == 2


def test_the_pool_counts_every_server_of_every_member_and_says_what_is_left(ledger):
    vision(ledger, "alice", "a", n=1)
    vision(ledger, "alice", "b", n=1)
    vision(ledger, "bob", n=1)
    with pytest.raises(GroupPoolFull) as refused:
        vision(ledger, "carol", n=2)
    assert str(refused.value) == (
        "You asked for 2 GPUs, but vision-lab's pool of 4 GPUs has 1 left (alice 2, bob 1). "
        "Ask for at most 1, or wait until a member of vision-lab stops a server."
    )
    assert (refused.value.group, refused.value.pool, refused.value.holders) == ("vision-lab", 4, {"alice": 2, "bob": 1})


def test_a_request_larger_than_the_pool_names_the_pool(ledger):
    with pytest.raises(
        GroupPoolFull,
        match=r"vision-lab's pool is 4 GPUs \(the GPUs its members may hold together\); ask for at most 4",
    ):
        vision(ledger, "alice", n=5)


def test_the_group_is_recorded_with_the_allocation_and_a_retried_spawn_is_not_counted_twice(ledger, path):
    first = vision(ledger, "alice", n=4)
    assert first.group == "vision-lab" and ledger.allocation_for("alice").group == "vision-lab"
    assert vision(ledger, "alice", n=4) == first  # the same spawn again: its own GPUs, not over the pool
    assert [a.group for a in ledger.allocations()] == ["vision-lab"]
    engine = create_engine(database_url(path))
    with engine.connect() as db:
        assert db.execute(text('SELECT "user", group_name FROM allocations')).all() == [("alice", "vision-lab")]
    engine.dispose()
    # Allocations charged to no group (or another) do not count against the pool.
    ledger.allocate("bob", "", 2)
    ledger.allocate("carol", "", 1, group="nlp", pool=8)
    ledger.release("alice")
    assert len(vision(ledger, "dave", n=4).gpu_uuids) == 4


def test_the_users_total_holds_across_servers_and_a_server_limit_holds_per_server(ledger):
    ledger.allocate("alice", "a", 2, user_total=3, server_limit=2)
    with pytest.raises(UserTotalExceeded, match=r"already hold 2 of your total of 3\. Ask for at most 1"):
        ledger.allocate("alice", "b", 2, user_total=3, server_limit=2)
    with pytest.raises(ServerLimitExceeded) as refused:
        ledger.allocate("alice", "b", 3, server_limit=2)
    assert (
        str(refused.value)
        == "You asked for 3 GPUs, but your quota allows at most 2 GPUs per server. Ask for at most 2."
    )
    assert [(a.server, len(a.gpu_uuids)) for a in ledger.allocations()] == [("a", 2)]


def test_concurrent_grants_from_several_processes_never_exceed_the_pool(path):
    """Twelve members start at once, each through its own connection (as the hub, the CLI and
    a second hub process would): the database's lock serializes the grants and exactly the pool is handed out."""
    outcomes: list[str] = []
    barrier = threading.Barrier(12)

    def start(user: str) -> None:
        with Ledger(path) as mine:
            barrier.wait()
            try:
                mine.allocate(user, "", 1, group="vision-lab", pool=3, user_total=1)
                outcomes.append("granted")
            except GroupPoolFull:
                outcomes.append("refused")

    threads = [threading.Thread(target=start, args=(f"u{i}",)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["granted"] * 3 + ["refused"] * 9
    with Ledger(path) as ledger:
        assert sum(len(a.gpu_uuids) for a in ledger.allocations() if a.group == "vision-lab") == 3
