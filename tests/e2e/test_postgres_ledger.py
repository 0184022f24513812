"""Two real hubs on one PostgreSQL ledger (issue 19): the ledger chosen by LABGPU_LEDGER's URL,
grants exclusive across the hubs by the database's own lock, and a hub starting up (reconcile)
leaving the other hub's running servers their GPUs. Simulated GPUs, real everything else: the
hubs, the proxy, Docker, the workspaces, and PostgreSQL (the test run's throwaway cluster)."""

from __future__ import annotations

import pytest

from labgpu.db.ledger import Ledger
from labgpu.db.session_store import SessionStore
from labgpu.gpus.simulated import simulated_gpus
from tests.harness import WORKSPACE_IMAGE, HubProcess, wait_until

pytestmark = pytest.mark.e2e

QUOTAS = f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}", display: "PyTorch workspace"}}
defaults: {{gpus: 1, gpus_total: 1, memory: 2G, cpus: 1, shm: 1G, images: [pytorch]}}
fairshare: {{allow_queue: false}}
"""


def test_two_hubs_on_one_postgresql_ledger_never_share_a_gpu(real_parts, postgres_cluster):
    url = postgres_cluster.new_database(migrated=False)  # the hub migrates it, as in production
    env = {"LABGPU_DEMO_GPUS": "1xH100", "LABGPU_LEDGER": url}
    first = HubProcess(users=["alice", "bob"], quotas=QUOTAS, extra_env=env)
    second = HubProcess(users=["alice", "bob"], quotas=QUOTAS, extra_env=env)
    (gpu,) = [g.uuid for g in simulated_gpus("1xH100")]
    try:
        first.start()
        alice = first.client("alice")
        assert alice.start_server(options={"gpus": 1}).status_code in (201, 202)
        alice.wait_ready()
        with Ledger(url, migrate=False) as ledger:
            assert ledger.allocation_for("alice").gpu_uuids == (gpu,)
            assert [a.user for a in ledger.allocations(hub_id=first.hub_id)] == ["alice"]
        # A second hub on the same ledger starts (and reconciles): alice's GPU stays hers, and
        # bob asking the second hub for it is refused, naming her.
        second.start()
        refused = second.client("bob").start_server(options={"gpus": 1})
        assert refused.status_code == 503
        assert "held by alice" in refused.json()["message"]
        assert second.containers() == []
        # Alice stops on the first hub: the GPU is free for bob on the second.
        alice.stop_server()
        bob = second.client("bob")
        assert bob.start_server(options={"gpus": 1}).status_code in (201, 202)
        bob.wait_ready()
        with Ledger(url, migrate=False) as ledger, SessionStore(ledger) as sessions:
            assert ledger.allocation_for("bob").gpu_uuids == (gpu,)
            assert [(e.action, e.user) for e in ledger.audit()] == [
                ("grant", "alice"),
                ("release", "alice"),
                ("grant", "bob"),
            ]
            wait_until(lambda: {s.user for s in sessions.sessions()} == {"alice", "bob"}, 30, "both sessions recorded")
        bob.stop_server()
    finally:
        second.cleanup()
        first.cleanup()
        postgres_cluster.drop_database(url)
