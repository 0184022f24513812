"""The GPU queue on a real ledger, SQLite and PostgreSQL alike: persistence across a restart, fair-share order,
pools and per-user totals while dequeuing, waiting spawns, cancel, and the spawn-page status."""

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import QueueStore
from labgpu.gpus.allocator import NotEnoughGpus
from labgpu.gpus.inventory import ReplayInventory
from labgpu.hub.gpu_queue import GpuQueue, QueuedSpawn, QueueRefused
from labgpu.quota import load_policy_text

DATA = Path(__file__).parent.parent / "data"

POLICY = """
defaults: {gpus: 8, gpus_total: 8, max_runtime: 1d, share: 1}
groups:
  vision: {members: [alice, bob], pool: 4, share: 1}
  nlp: {members: [hana, lea], share: 1}
fairshare: {half_life: 7d, allow_queue: true}
"""


class Clock:
    """A clock the test moves by hand (the ledger and the queue share it)."""

    def __init__(self):
        self.now = datetime(2026, 11, 24, 9, 14, tzinfo=UTC)

    def __call__(self):
        return self.now

    def advance(self, **kw):
        self.now += timedelta(**kw)


async def queued(queue, user: str, timeout: float = 10.0) -> None:
    """Wait (polling, with a deadline) until ``user``'s spawn has its entry in the queue."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await asyncio.to_thread(queue.store.waiting_for, user, "") is None:
        assert asyncio.get_running_loop().time() < deadline, f"{user} never entered the queue"
        await asyncio.sleep(0.02)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ledger(ledger_db, clock):
    with Ledger(ledger_db, clock=clock) as ledger:
        ledger.sync_inventory(ReplayInventory(DATA / "a100x8-two-nvlink-islands.json").gpus())
        yield ledger


@pytest.fixture
def queue(ledger, clock):
    policy = load_policy_text(POLICY)
    return GpuQueue(ledger, lambda: policy, poll_interval=0.05, clock=clock)


def test_waiting_entries_survive_a_restart_and_keep_their_place(ledger_db, clock):
    path = ledger_db
    with Ledger(path, clock=clock) as ledger:
        store = QueueStore(ledger)
        first = store.enqueue("alice", "", 2, groups=["vision"], models=["A100"], max_runtime=3600)
        clock.advance(minutes=5)
        store.enqueue("bob", "big", 4)
        store.close()
    clock.advance(minutes=30)
    with Ledger(path, clock=clock) as ledger:  # the hub restarted
        store = QueueStore(ledger)
        waiting = store.waiting()
        assert [(e.user, e.server, e.gpus) for e in waiting] == [("alice", "", 2), ("bob", "big", 4)]
        assert waiting[0].models == ("A100",) and waiting[0].groups == ("vision",) and waiting[0].max_runtime == 3600
        # alice spawns again: same entry, same submission time (not sent to the back)
        again = store.enqueue("alice", "", 2, groups=["vision"])
        assert again.id == first.id and again.submitted_at == first.submitted_at
        assert store.cancel_server("bob", "big") == 1
        assert [e.user for e in store.waiting()] == ["alice"]
        assert [e.status for e in store.history()] == ["waiting", "cancelled"]
        store.close()


def test_light_user_goes_ahead_of_a_heavy_user_who_asked_first(ledger, queue, clock):
    # hana held all 8 GPUs for two days; lea never used any.
    ledger.allocate("hana", "", 8)
    clock.advance(days=2)
    ledger.release("hana", "")
    ledger.allocate("zed", "", 8)  # someone else holds everything now
    clock.advance(hours=1)
    hana = queue.store.enqueue("hana", "", 6, groups=["nlp"])
    clock.advance(minutes=10)
    lea = queue.store.enqueue("lea", "", 6, groups=["nlp"])
    assert queue.dequeue_pass({hana.id, lea.id}) == []  # nothing free yet

    status = queue.status("hana", "")
    assert status.position == 2 and "held by zed since" in status.message
    assert status.message.startswith("You are #2 in the GPU queue: waiting for 6 GPUs held by zed since ")
    # zed may hold the GPUs 1 day (max_runtime), then lea may hold 6 of them for 1 day
    assert status.estimated_wait == pytest.approx((24 + 24) * 3600 - 70 * 60)
    assert status.message.endswith("; estimated wait 46 h 50 min")

    ledger.release("zed", "")
    granted = queue.dequeue_pass({hana.id, lea.id})
    assert [e.user for e in granted] == ["lea"]
    assert len(ledger.allocation_for("lea").gpu_uuids) == 6
    assert ledger.allocation_for("hana") is None
    assert [e.user for e in queue.store.waiting()] == ["hana"]
    assert queue.status("hana", "").position == 1


def test_a_group_keeps_the_usage_of_a_member_who_stopped(ledger, queue, clock):
    # alice (vision) held 8 GPUs for a day and stopped; bob (vision) asks before hana (nlp).
    # Fair share charges vision with alice's day, as the usage pages and /metrics do: hana first.
    ledger.allocate("alice", "", 8)
    clock.advance(days=1)
    ledger.release("alice", "")
    ledger.allocate("zed", "", 8)
    bob = queue.store.enqueue("bob", "", 4, groups=["vision"])
    clock.advance(minutes=1)
    hana = queue.store.enqueue("hana", "", 8, groups=["nlp"])
    assert queue.status("hana", "").position == 1 and queue.status("bob", "").position == 2
    ledger.release("zed", "")
    assert [e.user for e in queue.dequeue_pass({bob.id, hana.id})] == ["hana"]


def test_dequeue_respects_group_pools_and_user_totals(ledger, queue, clock):
    alice = queue.store.enqueue("alice", "", 3, groups=["vision"])
    bob = queue.store.enqueue("bob", "", 3, groups=["vision"])  # vision's pool is 4
    carol = queue.store.enqueue("carol", "", 2)
    granted = queue.dequeue_pass({alice.id, bob.id, carol.id})
    assert sorted(e.user for e in granted) == ["alice", "carol"]
    assert [e.user for e in queue.store.waiting()] == ["bob"]
    assert "would exceed a GPU limit" in queue.status("bob", "").message
    ledger.release("alice", "")
    assert [e.user for e in queue.dequeue_pass({bob.id})] == ["bob"]


def test_backfill_never_delays_the_head_of_the_queue(ledger, queue, clock):
    ledger.allocate("zed", "", 6)  # 2 free; zed ends within a day (max_runtime 1d)
    head = queue.store.enqueue("lea", "", 8, groups=["nlp"])
    clock.advance(minutes=1)
    short = queue.store.enqueue("carol", "", 2, max_runtime=3600)  # ends long before zed
    clock.advance(minutes=1)
    endless = queue.store.enqueue("dave", "", 2, max_runtime=3 * 86400)  # would still hold them
    granted = queue.dequeue_pass({head.id, short.id, endless.id})
    assert [e.user for e in granted] == ["carol"]
    assert {e.user for e in queue.store.waiting()} == {"lea", "dave"}


def test_a_request_larger_than_the_pool_is_refused_not_queued(queue):
    with pytest.raises(QueueRefused, match="You asked for 5 GPUs but group vision's pool is 4"):
        asyncio.run(queue.wait(QueuedSpawn("alice", "", 5, groups=("vision",))))
    assert queue.store.waiting() == []


async def test_a_waiting_spawn_gets_its_gpus_when_they_are_released(ledger, queue):
    ledger.allocate("zed", "", 8)
    task = asyncio.create_task(queue.acquire(QueuedSpawn("lea", "", 2, groups=("nlp",))))
    await queued(queue, "lea")
    assert not task.done() and queue.store.waiting_for("lea", "") is not None
    events = queue.progress_events("lea", "", lambda: not task.done(), interval=0.05)
    first = await events.__anext__()
    assert first["message"].startswith("You are #1 in the GPU queue: waiting for 2 GPUs held by zed since ")
    await asyncio.to_thread(ledger.release, "zed", "")
    allocation = await asyncio.wait_for(task, 5)
    assert len(allocation.gpu_uuids) == 2 and ledger.allocation_for("lea") == allocation
    assert [e.status for e in queue.store.history()] == ["granted"]
    await events.aclose()


async def test_cancelling_a_pending_spawn_removes_it_from_the_queue(ledger, queue):
    ledger.allocate("zed", "", 8)
    task = asyncio.create_task(queue.acquire(QueuedSpawn("lea", "", 2, groups=("nlp",))))
    await queued(queue, "lea")
    task.cancel()  # what JupyterHub does when the user cancels, or start_timeout runs out
    with pytest.raises(asyncio.CancelledError):
        await task
    assert queue.store.waiting() == []
    assert queue.store.history()[0].status == "cancelled"
    await asyncio.to_thread(ledger.release, "zed", "")
    assert ledger.allocation_for("lea") is None  # nobody is granted GPUs they no longer wait for


async def test_stop_while_pending_fails_the_waiting_spawn_with_a_clear_message(ledger, queue):
    ledger.allocate("zed", "", 8)
    task = asyncio.create_task(queue.acquire(QueuedSpawn("lea", "", 2, groups=("nlp",))))
    await queued(queue, "lea")
    assert queue.cancel("lea", "")
    with pytest.raises(QueueRefused, match="taken away"):
        await asyncio.wait_for(task, 5)


async def test_without_queueing_the_refusal_is_immediate(ledger, queue):
    ledger.allocate("zed", "", 7)
    with pytest.raises(NotEnoughGpus, match="1 is free"):
        await queue.acquire(QueuedSpawn("lea", "", 2), allow_queue=False)


async def test_a_new_spawn_does_not_jump_the_queue(ledger, queue, clock):
    ledger.allocate("zed", "", 6)
    waiting = asyncio.create_task(queue.acquire(QueuedSpawn("lea", "", 8, groups=("nlp",))))
    await queued(queue, "lea")
    clock.advance(minutes=1)
    # 2 GPUs are free, but lea waits for 8 and zed ends within a day: dave (no max runtime
    # of his own, so the policy's 1 day) would hold them past lea's reservation.
    jumper = asyncio.create_task(queue.acquire(QueuedSpawn("dave", "", 2)))
    await queued(queue, "dave")
    assert not jumper.done() and ledger.allocation_for("dave") is None
    assert queue.status("dave", "").position == 2
    for task in (waiting, jumper):
        task.cancel()
    await asyncio.gather(waiting, jumper, return_exceptions=True)


def test_entries_nobody_waits_for_are_abandoned(ledger, queue, clock):
    queue.store.enqueue("lea", "", 2)  # left from before a hub restart
    clock.advance(minutes=10)
    assert queue.dequeue_pass() == [] and len(queue.store.waiting()) == 1
    clock.advance(minutes=10)
    queue.dequeue_pass()
    assert queue.store.waiting() == [] and queue.store.history()[0].status == "abandoned"


# --- every limit inside the ledger's grant, whichever path (issue 12 item 2) ----------------------


async def test_a_full_pool_queues_a_spawn_although_gpus_are_free_and_a_members_release_grants_it(ledger, queue):
    await queue.acquire(QueuedSpawn("alice", "", 4, groups=("vision",)))
    task = asyncio.create_task(queue.acquire(QueuedSpawn("bob", "", 1, groups=("vision",))))
    await queued(queue, "bob")
    assert not task.done() and ledger.allocation_for("bob") is None  # 4 of 8 GPUs are free
    assert ledger.allocation_for("alice").group == "vision"  # charged to the group's pool, in the ledger
    assert queue.status("bob", "").message.startswith(
        "You are #1 in the GPU queue: waiting for 1 GPU (4 free, but your group"
    )
    await asyncio.to_thread(ledger.release, "alice", "")
    granted = await asyncio.wait_for(task, 5)
    assert len(granted.gpu_uuids) == 1 and granted.group == "vision"


async def test_without_queueing_a_full_pool_is_refused_naming_who_holds_it(ledger, queue):
    await queue.acquire(QueuedSpawn("alice", "", 2, groups=("vision",)))
    await queue.acquire(QueuedSpawn("bob", "x", 2, groups=("vision",)))
    with pytest.raises(NotEnoughGpus) as refused:
        await queue.acquire(QueuedSpawn("bob", "y", 1, groups=("vision",)), allow_queue=False)
    assert str(refused.value) == (
        "You asked for 1 GPU, but vision's pool of 4 GPUs is in use: alice 2, bob 2. "
        "Wait until a member of vision stops a server."
    )


def test_the_dequeue_grant_checks_the_pool_and_the_total_inside_the_ledger(ledger, clock, monkeypatch):
    """A plan made on a stale view (another hub process granted meanwhile) cannot pass a limit."""
    policy = load_policy_text(POLICY.replace("defaults: {gpus: 8, gpus_total: 8", "defaults: {gpus: 3, gpus_total: 3"))
    queue = GpuQueue(ledger, lambda: policy, clock=clock)
    ledger.allocate("alice", "", 4, group="vision", pool=4)
    ledger.allocate("carol", "a", 2)
    bob = queue.store.enqueue("bob", "", 1, groups=["vision"])
    carol = queue.store.enqueue("carol", "b", 2)
    monkeypatch.setattr(ledger, "allocations", lambda: [])  # the scheduler sees nothing held
    assert queue.dequeue_pass({bob.id, carol.id}) == []
    monkeypatch.undo()
    assert ledger.allocation_for("bob") is None and ledger.allocation_for("carol", "b") is None
    assert sorted(e.user for e in queue.store.waiting()) == ["bob", "carol"]  # they wait on
    ledger.release("alice")
    ledger.release("carol", "a")
    assert sorted(e.user for e in queue.dequeue_pass({bob.id, carol.id})) == ["bob", "carol"]
    assert ledger.allocation_for("bob").group == "vision"


@pytest.mark.parametrize(
    ("gpus", "excluded", "models", "message"),
    [
        (7, 2, None, "You asked for 7 GPUs but this server has 6; ask for at most 6."),
        (1, 0, ("H100",), "You asked for 1 GPUs? but this server has 0"),
    ],
)
def test_a_request_for_more_gpus_than_the_grant_rule_allows_it_is_refused_not_queued(
    ledger, queue, gpus, excluded, models, message
):
    exclude = tuple(h.gpu.uuid for h in ledger.holdings()[:excluded])  # as the policy's gpus.exclude
    with pytest.raises(QueueRefused, match=message):
        asyncio.run(asyncio.wait_for(queue.wait(QueuedSpawn("lea", "", gpus, models=models, exclude=exclude)), 5))
    assert queue.store.waiting() == []


# --- a spawn cancelled while its blocking work runs in a thread leaves nothing behind -----------


def blocking(monkeypatch, obj, name):
    """Make ``obj.name`` block in its thread until released; return (started, release) events."""
    started, release = threading.Event(), threading.Event()
    real = getattr(obj, name)

    def slow(*args, **kwargs):
        started.set()
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, slow)
    return started, release


async def test_a_spawn_cancelled_while_its_queue_entry_is_written_leaves_nothing_waiting(ledger, queue, monkeypatch):
    ledger.allocate("zed", "", 8)
    started, release = blocking(monkeypatch, queue.store, "enqueue")
    task = asyncio.create_task(queue.acquire(QueuedSpawn("lea", "", 2, groups=("nlp",))))
    await asyncio.to_thread(started.wait, 10)
    task.cancel()  # JupyterHub gives up on the spawn while the entry is being written
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert queue.store.waiting() == []
    assert queue.store.history()[0].status == "cancelled"


async def test_a_spawn_cancelled_while_its_gpus_are_granted_holds_nothing(ledger, queue, monkeypatch):
    started, release = blocking(monkeypatch, ledger, "allocate")
    task = asyncio.create_task(queue.acquire(QueuedSpawn("lea", "", 2, groups=("nlp",))))
    await asyncio.to_thread(started.wait, 10)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ledger.allocation_for("lea") is None
    assert [(e.user, e.action) for e in ledger.audit()][-2:] == [("lea", "grant"), ("lea", "release")]
