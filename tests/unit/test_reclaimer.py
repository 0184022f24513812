"""The reclaimer end to end on a virtual clock: a real SQLite ledger, real telemetry samples in
the poller's tables, and a real HTTP server standing in for the Hub API (it stops the server
the way the hub does: the spawner's stop releases the GPUs in the ledger)."""

import html
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import QueueStore
from labgpu.db.telemetry_store import TelemetryDB
from labgpu.fairshare.scheduler import Reclaim, Warn
from labgpu.gpus.inventory import ReplayInventory
from labgpu.gpus.telemetry import GpuReading
from labgpu.hub.announcement import announcement_for, hub_announcement
from labgpu.quota import load_policy_text
from labgpu.services.reclaimer import (
    ReclaimSettings,
    hub_server_stopper,
    hub_user_groups,
    reclaim_round,
    telemetry_busy_fraction,
)

DATA = Path(__file__).parent.parent / "data"
TOKEN = "secret-service-token"

POLICY = """
defaults: {gpus: 4, gpus_total: 4, idle_timeout: 1h, max_runtime: 1d}
fairshare: {reclaim_only_when_waiting: %s}
"""

# A 2 h limit; idle servers are taken back (after 1 h) only while someone waits.
RUNTIME_POLICY = """
defaults: {gpus: 4, gpus_total: 4, idle_timeout: 1h, max_runtime: 2h}
fairshare: {reclaim_only_when_waiting: true}
"""


class Clock:
    def __init__(self):
        self.now = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)

    def __call__(self):
        return self.now


class FakeHubApi(BaseHTTPRequestHandler):
    """DELETE /hub/api/users/{user}/server[s/{name}]: checks the token, releases like the hub.
    GET /hub/api/users/{user}: the user model with the hub's groups of that user."""

    ledger: Ledger
    deleted: list
    groups: dict

    def authorized(self):
        if self.headers.get("Authorization") == f"token {TOKEN}":
            return True
        self.send_response(403)
        self.end_headers()
        return False

    def do_GET(self):
        if not self.authorized():
            return
        user = self.path.split("/")[4]
        body = json.dumps({"kind": "user", "name": user, "groups": self.groups.get(user, [])}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def do_DELETE(self):
        if not self.authorized():
            return
        parts = self.path.split("/")  # ['', 'hub', 'api', 'users', user, 'server' | 'servers', name?]
        user, server = parts[4], (parts[6] if parts[5] == "servers" else "")
        type(self).deleted.append((user, server))
        self.ledger.release(user, server, "stopped")
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def always_idle(gpu_uuids, since, until):
    return 0.0


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ledger(ledger_db, clock):
    with Ledger(ledger_db, clock=clock) as ledger:
        ledger.sync_inventory(ReplayInventory(DATA / "a100x8-two-nvlink-islands.json").gpus())
        yield ledger


@pytest.fixture
def hub(ledger):
    handler = type("Hub", (FakeHubApi,), {"ledger": ledger, "deleted": [], "groups": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/hub/api"
    server.shutdown()
    server.server_close()


def run(
    ledger,
    hub_url,
    clock,
    *,
    minutes,
    busy_users=(),
    waiting=True,
    only_when_waiting=True,
    telemetry=True,
    policy_text=None,
):
    """Advance the virtual clock minute by minute: the poller writes a sample per GPU (90%
    busy for ``busy_users``' GPUs, 0% otherwise), lea keeps waiting in the queue, and the
    reclaimer runs a round every 5 minutes. Returns every action, with its minute."""
    store = QueueStore(ledger)
    db = TelemetryDB(ledger.url) if telemetry else None
    busy = telemetry_busy_fraction(ledger.url)
    policy = load_policy_text(policy_text or POLICY % ("true" if only_when_waiting else "false"))
    stop = hub_server_stopper(hub_url, TOKEN)
    gpus = ReplayInventory(DATA / "a100x8-two-nvlink-islands.json").gpus()
    if waiting:
        store.enqueue("lea", "", 4)
    actions = []
    for minute in range(1, minutes + 1):
        clock.now += timedelta(minutes=1)
        if db is not None:
            holders = {u: a.user for a in ledger.allocations() for u in a.gpu_uuids}
            readings = [
                (
                    GpuReading(g.uuid, g.index, utilization_gpu=90 if holders.get(g.uuid) in busy_users else 0),
                    60.0,
                    None,
                )
                for g in gpus
            ]
            db.write_tick(clock.now.timestamp(), readings, [])
        if waiting:
            store.heartbeat([e.id for e in store.waiting()])
        if minute % 5 == 0:
            for action in reclaim_round(ledger, store, policy, busy, stop, ReclaimSettings()):
                actions.append((minute, action))
    return actions, store


def test_idle_gpus_are_warned_then_reclaimed_while_someone_waits(ledger, hub, clock):
    handler, url = hub
    ledger.allocate("alice", "", 2)
    ledger.allocate("bob", "train", 2)
    actions, store = run(ledger, url, clock, minutes=40, busy_users=("bob",))
    assert actions == []  # idle 40 min of a 1 h idle_timeout: not yet
    assert announcement_for(store, "alice") == ""

    actions, store = run(ledger, url, clock, minutes=30, busy_users=("bob",))
    kinds = [(minute, type(a).__name__, a.user) for minute, a in actions]
    # first seen (and so counted busy) at the first round, minute 5: warned 45 min later, stopped at 60
    assert kinds == [(10, "Warn", "alice"), (25, "Reclaim", "alice")]
    warn = actions[0][1]
    assert "will be stopped in 15 min because its GPUs have been idle for 45 min" in warn.message
    assert handler.deleted == [("alice", "")]
    assert ledger.allocation_for("alice") is None  # GPUs released by the hub's stop
    assert len(ledger.allocation_for("bob", "train").gpu_uuids) == 2  # busy: never reclaimed
    shown = announcement_for(store, "alice")
    assert shown.startswith("Your server was stopped at ") and "were idle for 1 h" in shown
    assert "Your files in your home are kept" in shown
    assert announcement_for(store, "bob") == ""
    reclaimed = [n for n in store.notices() if n.reclaimed_at]
    assert [(n.user, n.gpus, n.reason, n.idle_for) for n in reclaimed] == [("alice", 2, "idle", 3600.0)]


def test_the_warning_shows_on_hub_pages_and_lapses_when_the_gpus_get_busy(ledger, hub, clock):
    handler, url = hub
    ledger.allocate("alice", "", 2)
    actions, store = run(ledger, url, clock, minutes=50)
    assert [type(a) for _, a in actions] == [Warn]
    shown = announcement_for(store, "alice")
    assert shown.startswith("Your server will be stopped at ") and "unless its GPUs get busy" in shown
    actions, store = run(ledger, url, clock, minutes=30, busy_users=("alice",))  # back at work
    assert actions == [] and handler.deleted == []
    assert announcement_for(store, "alice") == ""
    assert ledger.allocation_for("alice") is not None


def test_nothing_is_reclaimed_when_nobody_waits_if_so_configured(ledger, hub, clock):
    handler, url = hub
    ledger.allocate("alice", "", 2)
    actions, _ = run(ledger, url, clock, minutes=180, waiting=False)
    assert actions == [] and handler.deleted == []
    actions, _ = run(ledger, url, clock, minutes=20, waiting=False, only_when_waiting=False)
    assert [type(a) for _, a in actions] == [Warn, Reclaim] and handler.deleted == [("alice", "")]


def test_gpus_without_telemetry_are_never_reclaimed(ledger, hub, clock):
    handler, url = hub
    ledger.allocate("alice", "", 2)
    actions, _ = run(ledger, url, clock, minutes=180, telemetry=False)
    assert actions == [] and handler.deleted == []


def test_a_refused_stop_is_recorded_and_retried(ledger, clock):
    ledger.allocate("alice", "", 2)
    store = QueueStore(ledger)
    store.enqueue("lea", "", 4)
    policy = load_policy_text(POLICY % "true")
    stop = hub_server_stopper("http://127.0.0.1:9/hub/api", TOKEN, timeout=2)  # nothing listens there
    for _ in range(15):
        clock.now += timedelta(minutes=5)
        store.heartbeat([e.id for e in store.waiting()])
        reclaim_round(ledger, store, policy, always_idle, stop)
    notice = store.notices()[0]
    assert notice.reclaimed_at is None and "unreachable" in notice.error


def test_a_hub_group_with_a_longer_idle_timeout_keeps_its_members_servers(ledger, hub, clock):
    handler, url = hub
    handler.groups["alice"] = ["long-jobs"]  # from the hub (e.g. OAuth), not in the quota file's members
    ledger.allocate("alice", "", 2)
    ledger.allocate("bob", "", 2)
    store = QueueStore(ledger)
    store.enqueue("lea", "", 4)
    policy = load_policy_text((POLICY % "true") + "groups: {long-jobs: {idle_timeout: 3h}}\n")
    actions = []
    for _ in range(15):  # 75 minutes idle
        clock.now += timedelta(minutes=5)
        store.heartbeat([e.id for e in store.waiting()])
        actions += reclaim_round(
            ledger, store, policy, always_idle, hub_server_stopper(url, TOKEN), groups_of=hub_user_groups(url, TOKEN)
        )
    assert [(type(a).__name__, a.user) for a in actions] == [("Warn", "bob"), ("Reclaim", "bob")]
    assert handler.deleted == [("bob", "")]
    assert ledger.allocation_for("alice") is not None


def test_hub_groups_fall_back_to_the_last_answer_when_the_hub_does_not_answer(hub):
    handler, url = hub
    handler.groups["alice"] = ["long-jobs"]
    groups_of = hub_user_groups(url, TOKEN)
    assert groups_of("alice") == ("long-jobs",)
    assert groups_of("bob") == ()
    assert hub_user_groups(url, "wrong-token")("alice") == ()  # 403: the quota files' member lists only
    handler.groups.clear()
    assert groups_of("alice") == ()  # the hub answered: alice left the group


# --- max_runtime: a limit, whatever the load -------------------------------------------------


def test_a_busy_server_past_max_runtime_is_warned_then_stopped_with_nobody_waiting(ledger, hub, clock):
    handler, url = hub
    ledger.allocate("alice", "", 2)  # works the whole time
    ledger.allocate("bob", "", 2)  # idle the whole time, but nobody waits: the idle rule sleeps
    actions, store = run(
        ledger, url, clock, minutes=100, busy_users=("alice",), waiting=False, policy_text=RUNTIME_POLICY
    )
    assert actions == []  # 1 h 40 of 2 h: nothing yet, and bob's idle server is kept
    actions, store = run(
        ledger, url, clock, minutes=30, busy_users=("alice",), waiting=False, policy_text=RUNTIME_POLICY
    )
    kinds = [(minute, type(a).__name__, a.user, a.reason) for minute, a in actions]
    # Rounds every 5 min: warned at 1 h 45 (15 min ahead), both stopped at 2 h, busy or not.
    assert kinds == [
        (5, "Warn", "alice", "max_runtime"),
        (5, "Warn", "bob", "max_runtime"),
        (20, "Reclaim", "alice", "max_runtime"),
        (20, "Reclaim", "bob", "max_runtime"),
    ]
    assert sorted(handler.deleted) == [("alice", ""), ("bob", "")]
    assert ledger.allocations() == []
    shown = announcement_for(store, "alice")
    stopped_at = next(n.reclaimed_at for n in store.notices() if n.user == "alice")
    assert stopped_at == store.now() - timedelta(minutes=10)
    assert shown == html.escape(
        f"Your server was stopped at {stopped_at.astimezone():%H:%M}: Stopped alice's server: it ran 2 h, "
        "its limit is 2 h. Your files in your home are kept; start it again when you need the GPUs."
    )


def test_a_max_runtime_warning_stands_while_the_gpus_are_busy(ledger, hub, clock):
    _, url = hub
    ledger.allocate("alice", "", 2)
    actions, store = run(
        ledger, url, clock, minutes=110, busy_users=("alice",), waiting=False, policy_text=RUNTIME_POLICY
    )
    assert [(type(a).__name__, a.reason) for _, a in actions] == [("Warn", "max_runtime")]
    shown = announcement_for(store, "alice")
    assert shown.startswith("Your server will be stopped at ") and "unless" not in shown
    assert "it has run 1 h 45 min of its 2 h limit, busy or not" in shown


def test_an_idle_server_under_max_runtime_is_stopped_only_by_the_idle_rule(ledger, hub, clock):
    handler, url = hub
    ledger.allocate("alice", "", 2)
    actions, _ = run(ledger, url, clock, minutes=95, waiting=False, policy_text=RUNTIME_POLICY)
    assert actions == [] and handler.deleted == []  # idle 1 h 35, nobody waits: kept
    actions, _ = run(ledger, url, clock, minutes=5, waiting=True, policy_text=RUNTIME_POLICY)
    assert [(type(a).__name__, a.reason) for _, a in actions] == [("Warn", "idle")]


# --- the announcement bar never reads SQLite on the hub's event loop --------------------------


class User:
    def __init__(self, name):
        self.name = name


class InlineLater:
    """An executor that runs submitted work only when told (a thread that has not run yet)."""

    def __init__(self):
        self.pending = []

    def submit(self, fn, *args):
        self.pending.append((fn, args))

    def run_all(self):
        while self.pending:
            fn, args = self.pending.pop(0)
            fn(*args)


def test_a_hub_page_shows_the_last_notices_read_in_the_background_and_never_waits_for_sqlite():
    reads, now = [], [0.0]
    executor = InlineLater()

    def read(user):
        reads.append(user)
        return f"notice for {user} #{len(reads)}"

    announcement = hub_announcement("unused", read=read, clock=lambda: now[0], executor=executor, max_age=5.0)
    alice = User("alice")
    assert announcement(alice) == ""  # nothing read yet: the page does not wait for it
    assert announcement(alice) == "" and len(executor.pending) == 1  # one read in flight, not two
    executor.run_all()
    assert announcement(alice) == "notice for alice #1"
    now[0] = 4.9
    assert announcement(alice) == "notice for alice #1" and executor.pending == []  # fresh enough
    now[0] = 5.0
    assert announcement(alice) == "notice for alice #1"  # the stale text while it is re-read
    executor.run_all()
    assert announcement(alice) == "notice for alice #2"
    assert announcement(None) == ""  # the login page
    assert reads == ["alice", "alice"]


def test_a_failing_read_shows_nothing_and_is_tried_again():
    executor = InlineLater()
    now = [0.0]

    def read(user):
        raise OSError("database is locked")

    announcement = hub_announcement(
        "unused", "Maintenance at 18:00", read=read, clock=lambda: now[0], executor=executor
    )
    assert announcement(User("alice")) == "Maintenance at 18:00"
    executor.run_all()
    now[0] = 10.0
    assert announcement(User("alice")) == "Maintenance at 18:00" and len(executor.pending) == 1


def test_the_hub_page_reads_the_ledger_in_a_thread(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as ledger:  # the real clock: notices of the last day show
        ledger.sync_inventory(ReplayInventory(DATA / "a100x8-two-nvlink-islands.json").gpus())
        store = QueueStore(ledger)
        ledger.allocate("alice", "", 2)
        (allocation,) = ledger.allocations()
        notice = store.watch("alice", "", allocation.since, 2, busy_at=None)
        store.record_warning(notice.id, reason="idle", reclaim_at=store.now() + timedelta(minutes=15), message="Idle.")
        announcement = hub_announcement(ledger.url)
        assert announcement(User("alice")) == ""  # read in the background, shown on a later page
        shown = wait_for(lambda: announcement(User("alice")))
        assert shown.startswith("Your server will be stopped at ") and shown.endswith("unless its GPUs get busy: Idle.")


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")
