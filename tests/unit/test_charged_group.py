"""Which group pays: a user in several groups chooses the group a server is charged to (the spawn
option "group"); its pool is checked in the ledger, the queue keeps the choice, fair share puts
the request in that group, and usage per group charges it."""

from __future__ import annotations

import asyncio
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import QueueStore
from labgpu.db.usage import usage_rows
from labgpu.gpus.allocator import GroupPoolFull
from labgpu.gpus.inventory import ReplayInventory
from labgpu.hub.gpu_queue import GpuQueue, QueuedSpawn
from labgpu.quota import load_policy_text, resolve, user_groups
from labgpu.quota.spawn_options import SpawnOptionsError, options_form, validate_user_options

DATA = Path(__file__).parent.parent / "data"

POLICY = load_policy_text(
    textwrap.dedent(
        """
        defaults: {gpus: 4, gpus_total: 8}
        groups:
          vision-lab: {members: [alice, bob], pool: 1, share: 1}
          nlp-lab: {members: [alice, hana], pool: 3, share: 1}
          reading-club: {members: [alice]}
        fairshare: {half_life: 7d, allow_queue: true}
        """
    )
)
ALICE = resolve(POLICY, "alice")
BOB = resolve(POLICY, "bob")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ledger(tmp_path, clock):
    with Ledger(tmp_path / "ledger.sqlite", clock=clock) as ledger:
        ledger.sync_inventory(ReplayInventory(DATA / "a100x8-two-nvlink-islands.json").gpus())
        yield ledger


@pytest.fixture
def queue(ledger, clock):
    return GpuQueue(ledger, lambda: POLICY, poll_interval=0.05, clock=clock)


# -- the spawn option ---------------------------------------------------------------------------


def test_without_a_choice_the_first_group_with_a_pool_pays_as_before():
    assert ALICE.groups == ("nlp-lab", "reading-club", "vision-lab")
    assert validate_user_options(ALICE, {"gpus": 1}, gpus_in_use_by_user=0).group == "nlp-lab"
    assert validate_user_options(BOB, {}, gpus_in_use_by_user=0).group == "vision-lab"


def test_a_user_in_several_groups_chooses_one_of_them_and_it_is_saved_with_the_options():
    request = validate_user_options(ALICE, {"gpus": 1, "group": "vision-lab"}, gpus_in_use_by_user=0)
    assert request.group == "vision-lab"
    assert request.as_user_options()["group"] == "vision-lab"
    again = validate_user_options(ALICE, request.as_user_options(), gpus_in_use_by_user=0)
    assert again == request


@pytest.mark.parametrize(
    ("group", "message"),
    [
        (
            "nlp-lab",
            "You are not in group 'nlp-lab', so your server cannot be charged to it. Your groups: vision-lab.",
        ),
        ("admins", "You are not in group 'admins', so your server cannot be charged to it. Your groups: vision-lab."),
        (["vision-lab"], "Option 'group' must be a single value, not list ['vision-lab']."),
        (3, "Option 'group' must be a group name, not 3."),
    ],
)
def test_a_group_that_is_not_the_users_is_refused_naming_their_groups(group, message):
    with pytest.raises(SpawnOptionsError) as refused:
        validate_user_options(BOB, {"group": group}, gpus_in_use_by_user=0)
    assert str(refused.value) == message


def test_the_spawn_form_offers_the_choice_only_to_users_in_several_groups_with_the_saved_one_selected():
    form = options_form(ALICE, previous={"group": "vision-lab"})
    assert '<select class="form-control" id="labgpu-group" name="group">' in form
    assert '<option value="nlp-lab">nlp-lab (pool of 3 GPUs)</option>' in form
    assert '<option value="vision-lab" selected>vision-lab (pool of 1 GPU)</option>' in form
    assert '<option value="reading-club">reading-club</option>' in form
    assert 'name="group"' not in options_form(BOB)


# -- the ledger, the queue, fair share and usage charge the chosen group --------------------------


async def test_the_chosen_group_pays_in_the_ledger_its_pool_is_checked_and_usage_is_charged_to_it(ledger, queue, clock):
    groups = user_groups(POLICY, "alice")
    first = await queue.acquire(QueuedSpawn("alice", "", 1, groups=groups, group="vision-lab"), allow_queue=False)
    assert first.group == "vision-lab"
    assert ledger.allocation_for("alice").group == "vision-lab"
    # vision-lab's pool (1 GPU) is full now: a second server charged to it is refused ...
    with pytest.raises(GroupPoolFull, match="vision-lab's pool of 1 GPU is in use: alice 1"):
        await queue.acquire(QueuedSpawn("alice", "two", 1, groups=groups, group="vision-lab"), allow_queue=False)
    # ... and one charged to nlp-lab draws on nlp-lab's pool.
    second = await queue.acquire(QueuedSpawn("alice", "two", 2, groups=groups, group="nlp-lab"), allow_queue=False)
    assert second.group == "nlp-lab"

    clock.now += timedelta(hours=2)
    ledger.release("alice", "", "stopped")
    store = QueueStore(ledger)
    held = store.held_intervals(clock.now - timedelta(days=1), clock.now)
    assert sorted((h.server, h.group) for h in held) == [("", "vision-lab"), ("two", "nlp-lab")]
    rows = {r.name: r.gpu_hours_held for r in usage_rows(store, clock.now - timedelta(days=1), clock.now, by="group")}
    assert rows == {"vision-lab": pytest.approx(2.0), "nlp-lab": pytest.approx(4.0)}
    store.close()


async def test_a_queued_spawn_keeps_its_group_and_fair_share_puts_it_there(ledger, queue, clock):
    groups = user_groups(POLICY, "alice")
    ledger.allocate("bob", "", 1, group="vision-lab", pool=1)  # vision-lab's pool is full
    waiting = asyncio.ensure_future(queue.acquire(QueuedSpawn("alice", "", 1, groups=groups, group="vision-lab")))
    deadline = asyncio.get_running_loop().time() + 10
    while (entry := await asyncio.to_thread(queue.store.waiting_for, "alice", "")) is None:
        assert asyncio.get_running_loop().time() < deadline, "alice never entered the queue"
        await asyncio.sleep(0.02)
    assert entry.group == "vision-lab"
    view = queue.view([entry])
    assert view.group("alice") == "vision-lab"
    assert view.shares(["alice", "bob"]).group_of == {"alice": "vision-lab", "bob": "vision-lab"}
    assert view.ledger_limits("alice", group=entry.group)["pool"] == 1
    ledger.release("bob", "", "stopped")
    queue.notify()
    allocation = await asyncio.wait_for(waiting, 10)
    assert allocation.group == "vision-lab"
