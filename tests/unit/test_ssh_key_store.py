"""Users' SSH keys in the ledger's database: added once, listed oldest first, removed by
fingerprint, last use noted; on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from labgpu.db.ssh_key_store import SshKeyRefused, SshKeyStore
from labgpu.ssh.keys import BadKey
from labgpu.ssh.registry import register_key
from tests.unit.test_ssh_keys import ECDSA384, ECDSA384_FP, ED25519, ED25519_FP, RSA1024


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


@pytest.fixture
def store(ledger_db):
    with SshKeyStore(ledger_db, clock=Clock()) as s:
        yield s


def test_a_registered_key_is_listed_with_its_fingerprint_and_removed_by_it(store):
    register_key(store, "alice", ED25519)
    register_key(store, "alice", ECDSA384)
    keys = store.keys("alice")
    assert [(k.fingerprint, k.algorithm, k.comment) for k in keys] == [
        (ED25519_FP, "ssh-ed25519", "alice@laptop"),
        (ECDSA384_FP, "ecdsa-sha2-nistp384", ""),
    ]
    assert keys[0].public_key == " ".join(ED25519.split()[:2]) and keys[0].last_used_at is None
    assert store.keys("bob") == []
    assert store.remove("alice", ED25519_FP)
    assert not store.remove("alice", ED25519_FP)
    assert [k.fingerprint for k in store.keys("alice")] == [ECDSA384_FP]


def test_the_same_key_twice_is_refused(store):
    register_key(store, "alice", ED25519)
    with pytest.raises(SshKeyRefused) as refused:
        register_key(store, "alice", ED25519)
    assert str(refused.value) == f"this key ({ED25519_FP}) is registered already"


def test_a_key_another_user_registered_is_refused(store):
    # Public keys are public, and the gateway reads "ssh a.b@hub" as whoever owns the key: were
    # user a.b allowed a's public key, a's "ssh a.b@hub" (a's server b) would land in a.b's workspace.
    register_key(store, "a", ED25519)
    with pytest.raises(SshKeyRefused) as refused:
        register_key(store, "a.b", ED25519)
    assert str(refused.value) == f"this key ({ED25519_FP}) is registered to another account"
    assert store.keys("a.b") == []
    assert store.remove("a", ED25519_FP)
    register_key(store, "a.b", ED25519)  # once its owner removed it, it is free again
    assert [k.fingerprint for k in store.keys("a.b")] == [ED25519_FP]


def test_a_bad_key_is_refused_before_it_is_stored(store):
    with pytest.raises(BadKey, match="1024 bits"):
        register_key(store, "alice", RSA1024)
    assert store.keys("alice") == []


def test_a_user_has_at_most_the_limit_of_keys(store):
    store.add("alice", fingerprint="SHA256:a", algorithm="ssh-ed25519", public_key="ssh-ed25519 A", limit=2)
    store.add("alice", fingerprint="SHA256:b", algorithm="ssh-ed25519", public_key="ssh-ed25519 B", limit=2)
    with pytest.raises(SshKeyRefused, match="you have 2 keys, the most one may register: remove one first"):
        store.add("alice", fingerprint="SHA256:c", algorithm="ssh-ed25519", public_key="ssh-ed25519 C", limit=2)


def test_a_login_notes_when_the_key_was_last_used(store):
    key = register_key(store, "alice", ED25519)
    store.mark_used("alice", ED25519_FP)
    [listed] = store.keys("alice")
    assert listed.last_used_at is not None and listed.last_used_at > key.added_at
