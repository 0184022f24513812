"""An allocation storm on SQLite and on PostgreSQL: 8 processes, each a hub of its own, allocate and
release on one ledger at once; the audit, replayed in commit order, shows no GPU granted while
held. CI runs 1,600 requests per backend (a few seconds each); benchmarks/ledger_storm.py runs
the full 10,000 and records the figures."""

from __future__ import annotations

from datetime import UTC, datetime

from labgpu.db.audit_replay import replay_audit
from labgpu.db.ledger import AuditEvent
from tests.ledger_storm import run_storm

REQUESTS = 1600


def test_8_processes_storming_one_ledger_never_grant_a_held_gpu(ledger_db):
    result = run_storm(ledger_db, processes=8, requests=REQUESTS, gpus=16)
    assert result.granted + result.refused + result.released == REQUESTS
    assert result.granted > 100 and result.refused > 0  # the GPUs really were fought over
    assert result.replay.double_grants == []
    assert result.replay.bad_releases == []
    assert result.replay.grants == result.granted  # every grant a worker saw is in the audit, and no other
    assert result.replay.releases == result.released
    assert result.held_at_end_match  # the replay ends where the ledger is


def event(id_: int, action: str, allocation: int, *uuids: str) -> AuditEvent:
    return AuditEvent(id_, datetime(2026, 12, 3, tzinfo=UTC), action, "u", "", uuids, allocation, None, "")


def test_the_replay_finds_a_double_grant_and_a_release_of_what_was_not_held():
    replay = replay_audit(
        [
            event(1, "grant", 1, "GPU-a", "GPU-b"),
            event(2, "grant", 2, "GPU-b"),  # GPU-b is allocation 1's
            event(3, "release", 3, "GPU-c"),  # nobody held GPU-c
        ]
    )
    assert replay.double_grants == ["event 2: GPU-b granted to allocation 2 (u/) while allocation 1 held it"]
    assert replay.bad_releases == ["event 3: allocation 3 released GPU-c, held by nobody"]
    assert not replay.consistent
