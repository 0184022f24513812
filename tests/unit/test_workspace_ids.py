"""Workspace uids and group gids: handed out once, kept across restarts, never twice the same."""

from __future__ import annotations

import threading

from labgpu.db.workspace_ids import BASES, WorkspaceIdStore


def test_ids_are_handed_out_once_and_kept_across_a_restart(tmp_path):
    url = tmp_path / "ledger.sqlite"
    store = WorkspaceIdStore(url)
    assert store.uid("alice") == BASES["user"]
    assert store.uid("bob") == BASES["user"] + 1
    assert store.uid("alice") == BASES["user"]
    assert store.gid("vision-lab") == BASES["group"]
    store.close()
    again = WorkspaceIdStore(url)  # the hub restarted
    assert again.uid("bob") == BASES["user"] + 1 and again.gid("vision-lab") == BASES["group"]
    assert again.all() == {"user": {"alice": 20001, "bob": 20002}, "group": {"vision-lab": 30001}}
    again.close()


def test_two_processes_asking_at_once_never_get_one_number(tmp_path):
    url = tmp_path / "ledger.sqlite"
    WorkspaceIdStore(url).close()
    stores = [WorkspaceIdStore(url, migrate=False) for _ in range(4)]
    got: dict[str, set[int]] = {}
    lock = threading.Lock()

    def ask(store: WorkspaceIdStore, names: list[str]) -> None:
        for name in names:
            uid = store.uid(name)
            with lock:
                got.setdefault(name, set()).add(uid)

    names = [f"user{i}" for i in range(20)]
    threads = [threading.Thread(target=ask, args=(s, names[i:] + names[:i])) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(uids) == 1 for uids in got.values())  # each user one uid, whoever asked
    assert len({next(iter(u)) for u in got.values()}) == 20  # and no uid given to two users
    for s in stores:
        s.close()
