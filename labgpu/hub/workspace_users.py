"""Which uid and gids a workspace runs as: each hub user their own uid, each group folder its
group's gid, so that files in a group folder show who wrote them and only their owner removes
them, while every member may write there.

The numbers come from the ledger (:class:`labgpu.db.workspace_ids.WorkspaceIdStore`: handed out
once, kept for good). The workspace runs as ``uid:100`` (100 is the image's ``users`` group,
jovyan's, so what the image installed for it stays readable) with each of the user's group
folders' gids as a supplementary group (``group_add``). Its home is handed to the uid the first
time it is not theirs (an existing home of the one-uid layout keeps working), by the same
throwaway helper container that prepares the shared folders (:mod:`labgpu.hub.shared_folders`:
no network, only the CHOWN, FOWNER, FSETID and DAC_OVERRIDE capabilities); the workspace itself keeps
every capability dropped. ``USER`` and ``LOGNAME`` name the user, since the uid has no entry in
the image's /etc/passwd (``getpass.getuser()`` reads them first).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from labgpu.db.workspace_ids import WorkspaceIdStore

_stores: dict[str, WorkspaceIdStore] = {}


@dataclass(frozen=True)
class WorkspaceUser:
    """The uid and gids of one spawn: ``folder_gids`` maps each shared folder's volume to its gid."""

    uid: str
    gid: str
    folder_gids: Mapping[str, str] = field(default_factory=dict)

    @property
    def group_add(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.folder_gids.values()), key=int))

    def environment(self, user: str) -> dict[str, str]:
        return {"USER": user, "LOGNAME": user}


def id_store(ledger_url: str | Path) -> WorkspaceIdStore:
    """The id store of this ledger, opened once per hub process (the ledger has migrated it)."""
    key = str(ledger_url)
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = WorkspaceIdStore(ledger_url, migrate=False)
    return store


def workspace_user(store: WorkspaceIdStore, user: str, folders: Mapping[str, str], gid: str) -> WorkspaceUser:
    """``user``'s uid and the gid of each of their shared folders (``folders``: volume -> the group
    it belongs to); blocking (the ledger)."""
    return WorkspaceUser(str(store.uid(user)), gid, {volume: str(store.gid(g)) for volume, g in folders.items()})
