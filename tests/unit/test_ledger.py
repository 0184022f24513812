"""The ledger on a real database, SQLite and PostgreSQL alike (``ledger_db``): grants, releases,
audit, inventory changes, reconcile."""

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from labgpu.db.engine import database_url
from labgpu.db.ledger import Ledger
from labgpu.gpus.allocator import NotEnoughGpus
from labgpu.gpus.inventory import ReplayInventory
from labgpu.gpus.reconcile import reconcile

DATA = Path(__file__).parent.parent / "data"


class Clock:
    def __init__(self):
        self.now = datetime(2026, 11, 24, 9, 14, tzinfo=UTC)

    def __call__(self):
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def box8():
    return ReplayInventory(DATA / "a100x8-two-nvlink-islands.json").gpus()


@pytest.fixture
def ledger(ledger_db, box8):
    with Ledger(ledger_db, clock=Clock()) as ledger:
        ledger.sync_inventory(box8)
        yield ledger


def test_database_is_wal_with_the_schema_at_alembic_head(tmp_path):
    path = tmp_path / "sub" / "ledger.sqlite"
    Ledger(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # its own version table: the ledger may share a database with JupyterHub's alembic_version
    from labgpu.db.engine import head_revision

    assert db.execute("SELECT version_num FROM labgpu_alembic_version").fetchall() == [(head_revision(),)]
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"gpus", "allocations", "allocation_gpus", "allocation_events"} <= tables


def test_grant_and_release_are_recorded_and_audited(ledger, box8):
    granted = ledger.allocate("alice", "", 2, image="sha256:abc")
    assert granted.gpu_uuids == (box8[0].uuid, box8[1].uuid)
    assert ledger.allocation_for("alice") == granted
    holders = {h.gpu.index: h.allocation.user if h.allocation else None for h in ledger.holdings()}
    assert holders == {0: "alice", 1: "alice", 2: None, 3: None, 4: None, 5: None, 6: None, 7: None}
    released = ledger.release("alice", "", "stopped")
    assert released.gpu_uuids == granted.gpu_uuids
    assert ledger.allocation_for("alice") is None and ledger.release("alice", "", "again") is None
    events = ledger.audit()
    assert [(e.action, e.user, e.gpu_uuids, e.image) for e in events] == [
        ("grant", "alice", granted.gpu_uuids, "sha256:abc"),
        ("release", "alice", granted.gpu_uuids, "sha256:abc"),
    ]
    assert events[1].reason == "stopped"


def test_no_gpu_is_granted_twice_and_refusal_names_the_holders(ledger):
    ledger.allocate("alice", "", 4)
    ledger.allocate("bob", "big", 3)
    with pytest.raises(NotEnoughGpus) as refused:
        ledger.allocate("carol", "", 2)
    message = str(refused.value)
    assert message.startswith("Not enough free GPUs: you asked for 2, 1 is free (")
    assert "held by alice since" in message and "held by bob/big since" in message
    held = [u for a in ledger.allocations() for u in a.gpu_uuids]
    assert len(held) == len(set(held)) == 7
    assert ledger.allocation_for("carol") is None
    assert [e.action for e in ledger.audit()] == ["grant", "grant"]  # the refusal changed nothing


def test_second_request_for_a_server_is_idempotent_or_replaces(ledger):
    first = ledger.allocate("alice", "", 2)
    assert ledger.allocate("alice", "", 2) == first  # a retried spawn keeps its GPUs
    bigger = ledger.allocate("alice", "", 4)
    assert len(bigger.gpu_uuids) == 4
    assert [e.action for e in ledger.audit()] == ["grant", "release", "grant"]
    assert len(ledger.allocations()) == 1


def test_named_servers_of_one_user_hold_separate_gpus(ledger):
    a = ledger.allocate("alice", "", 1)
    b = ledger.allocate("alice", "second", 1)
    assert set(a.gpu_uuids).isdisjoint(b.gpu_uuids)
    ledger.release("alice", "", "stopped")
    assert ledger.allocation_for("alice", "second") == b


def test_unhealthy_excluded_and_vanished_gpus_are_not_granted(ledger, box8):
    sick = [replace(g, healthy=False, health_reason="NVML: GPU is lost") if g.index == 0 else g for g in box8]
    change = ledger.sync_inventory(sick[:7])  # GPU 7 is no longer listed
    assert change.became_unhealthy == (box8[0].uuid,) and change.gone == (box8[7].uuid,)
    granted = ledger.allocate("alice", "", 5, exclude={box8[1].uuid})
    assert {box8[0].uuid, box8[1].uuid, box8[7].uuid}.isdisjoint(granted.gpu_uuids)
    with pytest.raises(NotEnoughGpus, match=r"you asked for 1, 0 are free .*1 unhealthy"):
        ledger.allocate("bob", "", 1, exclude={box8[1].uuid})
    assert [h.gpu.index for h in ledger.holdings()] == list(range(7))
    assert [h.present for h in ledger.holdings(include_gone=True)][-1] is False


def test_gpu_held_when_it_vanishes_stays_held_until_released(ledger, box8):
    granted = ledger.allocate("alice", "", 8)
    ledger.sync_inventory(box8[:4])
    assert ledger.allocation_for("alice").gpu_uuids == granted.gpu_uuids
    ledger.release("alice", "", "stopped")
    assert ledger.allocate("bob", "", 4).gpu_uuids == tuple(g.uuid for g in box8[:4])


def test_models_filter_in_the_ledger(ledger):
    with pytest.raises(NotEnoughGpus, match="Not enough free H100 GPUs: you asked for 1, 0 are free"):
        ledger.allocate("alice", "", 1, models=["H100"])
    assert len(ledger.allocate("alice", "", 1, models=["A100"]).gpu_uuids) == 1


def test_ledger_survives_reopening(ledger_db, box8):
    path = ledger_db
    with Ledger(path) as first:
        first.sync_inventory(box8)
        granted = first.allocate("alice", "", 3)
    with Ledger(path) as second:  # the hub restarted
        assert second.allocation_for("alice") == granted
        assert len(second.allocate("bob", "", 5).gpu_uuids) == 5


def test_reconcile_plan_applied_to_the_ledger(ledger, box8):
    ledger.allocate("alice", "", 2)  # her container is gone after the crash
    ledger.allocate("bob", "", 1)  # his is still running
    containers = [
        {
            "id": "c-bob",
            "state": "running",
            "org.labgpu.user": "bob",
            "org.labgpu.server": "",
            "org.labgpu.gpus": ledger.allocation_for("bob").gpu_uuids[0],
            "org.labgpu.hub": "labgpu",
        },
        {
            "id": "c-dan",
            "state": "running",
            "org.labgpu.user": "dan",
            "org.labgpu.server": "x",
            "org.labgpu.gpus": f"{box8[6].uuid},{box8[7].uuid}",
            "org.labgpu.hub": "labgpu",
        },
    ]
    plan = reconcile(ledger.allocations(), containers, hub_id="labgpu", known_gpus={g.uuid for g in box8})
    result = ledger.apply_reconcile(plan)
    assert [a.user for a in result.released] == ["alice"] and [a.user for a in result.adopted] == ["dan"]
    assert not result.skipped
    assert {a.user for a in ledger.allocations()} == {"bob", "dan"}
    assert ledger.allocation_for("dan", "x").gpu_uuids == (box8[6].uuid, box8[7].uuid)
    assert [e.action for e in ledger.audit()][-2:] == ["release", "adopt"]
    # applying the same plan again changes nothing and says why
    again = ledger.apply_reconcile(plan)
    assert not again.released and not again.adopted and "already holds" in again.skipped[0]


def test_stale_adoption_never_takes_a_gpu_someone_holds(ledger, box8):
    plan = reconcile([], [{"id": "c1", "state": "running", "org.labgpu.user": "eve", "org.labgpu.gpus": box8[0].uuid}])
    ledger.allocate("alice", "", 1)  # granted box8[0] after the plan was made
    result = ledger.apply_reconcile(plan)
    assert not result.adopted and "held" in result.skipped[0]
    assert ledger.allocation_for("eve") is None


def test_ledger_can_share_a_database_with_jupyterhubs_own_migrations(ledger_db):
    engine = create_engine(database_url(ledger_db))
    with engine.begin() as db:
        db.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        db.execute(text("INSERT INTO alembic_version VALUES ('4621fec11365')"))  # a JupyterHub revision
    with Ledger(ledger_db) as ledger:
        ledger.sync_inventory(ReplayInventory(DATA / "h100x1.json").gpus())
        assert len(ledger.allocate("alice").gpu_uuids) == 1
    with engine.connect() as db:
        assert db.execute(text("SELECT version_num FROM alembic_version")).all() == [("4621fec11365",)]
    engine.dispose()


def test_user_total_is_checked_inside_the_allocation_transaction(ledger_db):
    """Two servers of one user starting at once cannot both pass the quota's GPU total."""
    import threading

    from labgpu.gpus.allocator import UserTotalExceeded
    from labgpu.gpus.inventory import ReplayInventory

    path = ledger_db
    ledger = Ledger(path)
    ledger.sync_inventory(
        ReplayInventory(Path(__file__).resolve().parent.parent / "data" / "a100x8-two-nvlink-islands.json").gpus()
    )
    ledger.allocate("alice", "a", 2, user_total=3)
    with pytest.raises(UserTotalExceeded, match=r"already hold 2 of your total of 3\. Ask for at most 1"):
        ledger.allocate("alice", "b", 2, user_total=3)
    # A retried spawn of the same server is not counted against itself.
    assert len(ledger.allocate("alice", "a", 3, user_total=3).gpu_uuids) == 3

    outcomes: list[str] = []

    def start(server: str) -> None:
        with Ledger(path) as hub:
            try:
                hub.allocate("bob", server, 1, user_total=1)
                outcomes.append("granted")
            except UserTotalExceeded:
                outcomes.append("refused")

    threads = [threading.Thread(target=start, args=(f"s{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["granted"] + ["refused"] * 5
    ledger.close()


def test_a_release_for_one_grant_never_frees_a_newer_allocation_of_the_server(ledger):
    """The hub releases a container's GPUs once it is gone: only the allocation it ran on."""
    old = ledger.allocate("alice", "", 2)
    assert ledger.release("alice", "", "container gone", granted_at=old.since - timedelta(seconds=1)) is None
    assert ledger.allocation_for("alice") == old
    assert ledger.release("alice", "", "container gone", granted_at=old.since) == old
    assert ledger.allocation_for("alice") is None


def test_an_inventory_change_made_by_another_process_is_seen_by_the_next_grant(ledger, ledger_db, box8):
    """A grant re-reads the inventory only when its version moved: a GPU the poller (another
    process) took out of service, or one the hub's inventory no longer lists, is never granted."""
    assert ledger.allocate("alice", "", 1).gpu_uuids == (box8[0].uuid,)  # this ledger has read the inventory
    with Ledger(ledger_db) as poller:
        poller.set_gpu_health(box8[1].uuid, "Xid 79: GPU has fallen off the bus")
    with pytest.raises(NotEnoughGpus):
        ledger.allocate("bob", "", 7)
    assert box8[1].uuid not in ledger.allocate("bob", "", 6).gpu_uuids
    ledger.release("bob")
    with Ledger(ledger_db) as other_hub:
        other_hub.sync_inventory(box8[:4])  # GPUs 4-7 are gone
    assert set(ledger.allocate("carol", "", 2).gpu_uuids) == {box8[2].uuid, box8[3].uuid}


def test_with_several_hubs_on_one_ledger_each_reconciles_only_its_own_allocations(ledger_db, box8):
    """Two hubs (an active pair on one PostgreSQL ledger): hub B restarting releases what its own
    vanished containers held, never what hub A's running servers hold."""
    with Ledger(ledger_db, hub_id="hub-a") as a, Ledger(ledger_db, hub_id="hub-b") as b:
        a.sync_inventory(box8)
        alice = a.allocate("alice", "", 2)
        bob = b.allocate("bob", "", 1)
        b.allocate("carol", "", 1)  # her container is gone when hub B restarts
        containers = [
            {
                "id": "c-bob",
                "state": "running",
                "org.labgpu.user": "bob",
                "org.labgpu.server": "",
                "org.labgpu.gpus": bob.gpu_uuids[0],
                "org.labgpu.hub": "hub-b",
            }
        ]
        mine = b.allocations(hub_id="hub-b")
        assert [x.user for x in mine] == ["bob", "carol"]
        result = b.apply_reconcile(reconcile(mine, containers, hub_id="hub-b", known_gpus={g.uuid for g in box8}))
        assert [x.user for x in result.released] == ["carol"]
        assert a.allocation_for("alice") == alice and [x.user for x in a.allocations()] == ["alice", "bob"]


def test_the_sqlite_wal_is_checkpointed_by_a_thread_not_inside_a_grant(tmp_path, box8):
    """A grant's commit never copies the WAL back (that was the allocation p99's tail): the
    ledger's writers have SQLite's automatic checkpoint off, and its checkpoint thread moves the
    grants into the database file soon after (read here from the file alone, ignoring the WAL)."""
    from tests.harness import wait_until

    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        ledger.sync_inventory(box8)
        with ledger.writer.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        for _ in range(250):
            ledger.allocate("alice", "", 1)
            ledger.release("alice")

        def events_in_the_database_file() -> int:
            db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
            try:
                return db.execute("SELECT count(*) FROM allocation_events").fetchone()[0]
            finally:
                db.close()

        wait_until(lambda: events_in_the_database_file() >= 400, 30, "the checkpoint thread to copy the WAL back")
