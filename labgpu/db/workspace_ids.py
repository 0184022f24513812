"""Stable numeric ids for workspaces: the uid each hub user's workspace runs as, and the gid of each
group's shared folder. The only code that reads or writes the ``workspace_ids`` table
(:mod:`labgpu.db.tables`, Alembic revision 0009).

An id is handed out the first time it is asked for (the next free number from the kind's base,
inside the store's write lock, so two hub processes never hand out one number twice) and kept
for good: files a user wrote in a group folder keep showing them as their owner, across hub
restarts, upgrades and renamed quota files. The bases keep clear of the image's own users (jovyan
is 1000) and of the host's usual ranges; an admin who maps them to real accounts can read them
with ``labgpu`` tooling or straight from the table.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, insert, select

from labgpu.db.engine import Clock, Store
from labgpu.db.tables import WorkspaceIdRow

USER, GROUP = "user", "group"
BASES = {USER: 20001, GROUP: 30001}  # first uid, first gid
LIMITS = {USER: 29999, GROUP: 39999}  # last of each range: 9,999 users and 9,999 groups

_ids = WorkspaceIdRow.__table__


class WorkspaceIdStore(Store):
    """uids of users and gids of groups, handed out once. Safe across threads and processes."""

    def __init__(self, url_or_path: str | Path, *, clock: Clock | None = None, migrate: bool = True) -> None:
        super().__init__(url_or_path, clock=clock, migrate=migrate)

    def _number(self, kind: str, name: str) -> int:
        where = (_ids.c.kind == kind) & (_ids.c.name == name)
        with self.reader.connect() as conn:
            known = conn.execute(select(_ids.c.number).where(where)).scalar()
        if known is not None:
            return int(known)
        with self.writer.begin() as conn:  # the store's lock: one writer hands out numbers at a time
            known = conn.execute(select(_ids.c.number).where(where)).scalar()
            if known is not None:
                return int(known)
            highest = conn.execute(select(func.max(_ids.c.number)).where(_ids.c.kind == kind)).scalar()
            number = BASES[kind] if highest is None else int(highest) + 1
            if number > LIMITS[kind]:
                raise RuntimeError(f"no {kind} id left in {BASES[kind]}..{LIMITS[kind]} for {name!r}")
            conn.execute(insert(_ids).values(kind=kind, name=name, number=number, assigned_at=self._clock()))
            return number

    def uid(self, user: str) -> int:
        """The uid ``user``'s workspaces run as (handed out on first use)."""
        return self._number(USER, user)

    def gid(self, group: str) -> int:
        """The gid of ``group``'s shared folder (handed out on first use)."""
        return self._number(GROUP, group)

    def all(self) -> dict[str, dict[str, int]]:
        """Every id handed out: ``{"user": {name: uid}, "group": {name: gid}}``."""
        found: dict[str, dict[str, int]] = {USER: {}, GROUP: {}}
        with self.reader.connect() as conn:
            for kind, name, number in conn.execute(select(_ids.c.kind, _ids.c.name, _ids.c.number)):
                found.setdefault(kind, {})[name] = int(number)
        return found
