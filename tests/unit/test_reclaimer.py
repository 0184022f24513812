"""The reclaimer end to end on a virtual clock: a real SQLite ledger, real telemetry samples in
the poller's tables, and a real HTTP server standing in for the Hub API (it stops the server
the way the hub does: the spawner's stop releases the GPUs in the ledger)."""

import json
import threading
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
from labgpu.hub.announcement import announcement_for
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
def ledger(tmp_path, clock):
    with Ledger(tmp_path / "ledger.sqlite", clock=clock) as ledger:
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


def run(ledger, hub_url, clock, *, minutes, busy_users=(), waiting=True, only_when_waiting=True, telemetry=True):
    """Advance the virtual clock minute by minute: the poller writes a sample per GPU (90%
    busy for ``busy_users``' GPUs, 0% otherwise), lea keeps waiting in the queue, and the
    reclaimer runs a round every 5 minutes. Returns every action, with its minute."""
    store = QueueStore(ledger)
    db = TelemetryDB(ledger.url) if telemetry else None
    busy = telemetry_busy_fraction(ledger.url)
    policy = load_policy_text(POLICY % ("true" if only_when_waiting else "false"))
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
