"""The hub's groups follow the quota files: a group whose ``members:`` the files list has exactly
those members in JupyterHub, added *and removed*, at hub start and within a few seconds of every
edit. JupyterHub's own ``load_groups`` only adds, so without this an ex-member kept the group's
limits and its shared folder after a reload and after a restart.

How: a small task in the hub process (:func:`start_in_hub`, called by ``jupyterhub_config.py``)
re-reads the quota files every few seconds off the event loop (the spawners' hot-reloading
:class:`~labgpu.quota.PolicyStore`, so the hub logs a reload or a bad edit at once, not at the next
spawn) and then makes the hub's group rows match through JupyterHub's ORM, in the hub's own
database session, as ``load_groups`` does. Why the ORM and not the Hub REST API: it needs no
token with group-admin scopes lying around, no HTTP round trip to itself, and it works before
the hub listens (the first sync runs during start-up, so a restarted hub never serves a stale
membership); it is the session JupyterHub itself uses on its event loop for every request.

Groups without a ``members:`` list (e.g. from an OAuth authenticator) are left alone. A listed
member with no hub account yet is added once the account exists (at hub start ``load_groups``
creates it, as before); membership the admin page changes in a listed group is set back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from labgpu.quota import Policy, PolicyStore, listed_members

log = logging.getLogger("labgpu")


@dataclass(frozen=True)
class MembershipChange:
    """Who joins and who leaves one hub group."""

    group: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __str__(self) -> str:
        parts = [
            f"added {', '.join(self.added)}" if self.added else "",
            f"removed {', '.join(self.removed)}" if self.removed else "",
        ]
        return f"group {self.group}: " + "; ".join(p for p in parts if p)


def membership_changes(
    wanted: Mapping[str, Collection[str]],
    current: Mapping[str, Collection[str]],
    existing_users: Collection[str] | None = None,
) -> list[MembershipChange]:
    """What makes each ``wanted`` group's members equal its list (``current``: the hub's members
    now; ``existing_users``: who has a hub account, None = everyone). Groups not in ``wanted``
    are not touched."""
    changes = []
    for group in sorted(wanted):
        members, now = set(wanted[group]), set(current.get(group, ()))
        added = sorted(u for u in members - now if existing_users is None or u in existing_users)
        removed = sorted(now - members)
        if added or removed:
            changes.append(MembershipChange(group, tuple(added), tuple(removed)))
    return changes


def sync_hub_groups(db: Any, policy: Policy, normalize: Callable[[str], str] = str) -> list[MembershipChange]:
    """Make the hub's groups (JupyterHub's ORM session ``db``) match ``policy``'s member lists,
    names normalized as the hub's authenticator does; creates a listed group the hub lacks.
    Commits only when something changed; returns what changed."""
    from jupyterhub import orm

    wanted = {group: {normalize(m) for m in members} for group, members in listed_members(policy).items()}
    groups, created = {}, False
    for name in wanted:
        group = orm.Group.find(db, name)
        if group is None:
            group = orm.Group(name=name)
            db.add(group)
            created = True
        groups[name] = group
    everyone = set().union(*wanted.values()) if wanted else set()
    users = {u.name: u for u in db.query(orm.User).filter(orm.User.name.in_(everyone))} if everyone else {}
    current = {name: {u.name for u in group.users} for name, group in groups.items()}
    changes = membership_changes(wanted, current, users.keys())
    for change in changes:
        group = groups[change.group]
        for name in change.added:
            group.users.append(users[name])
        for user in [u for u in group.users if u.name in change.removed]:
            group.users.remove(user)
    if changes or created:
        db.commit()
    return changes


class GroupSync:
    """The hub's watcher: every ``interval`` seconds, reload the policy if a file changed (in a
    thread) and sync the groups (on the event loop, in the hub's session)."""

    def __init__(
        self,
        store: PolicyStore,
        db: Callable[[], Any],
        normalize: Callable[[str], str] = str,
        interval: float = 5.0,
        logger: logging.Logger = log,
    ) -> None:
        self.store, self.db, self.normalize, self.interval, self.log = store, db, normalize, interval, logger

    async def tick(self) -> list[MembershipChange]:
        result = await asyncio.get_running_loop().run_in_executor(None, self.store.refresh)
        if result.errors:
            self.log.error(
                "Quota files changed but are invalid; the last good policy stays in force:\n  %s",
                "\n  ".join(result.errors),
            )
        elif result.applied:
            self.log.info("Quota policy reloaded from %s", ", ".join(self.store.paths))
        changes = sync_hub_groups(self.db(), self.store.policy, self.normalize)
        for change in changes:
            self.log.info("Hub groups follow the quota files: %s", change)
        return changes

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                self.log.exception(
                    "Could not sync the hub's groups with the quota files; trying again in %.0f s", self.interval
                )
            await asyncio.sleep(self.interval)


_tasks: list[asyncio.Task[None]] = []  # keeps the watcher alive (the loop holds tasks weakly)


def start_in_hub(store: PolicyStore, interval: float) -> bool:
    """Start :class:`GroupSync` in the running hub. ``jupyterhub_config.py`` calls it: JupyterHub
    loads its configuration inside its start-up coroutine, so the hub's event loop runs and the
    app exists; the watcher waits until JupyterHub has opened its database and loaded its groups
    (its web application is built right after). Returns False (and does nothing) when the file
    is read some other way, e.g. by ``jupyterhub --help-all``."""
    from jupyterhub.app import JupyterHub

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    if not JupyterHub.initialized():
        return False
    app = JupyterHub.instance()

    async def watch() -> None:
        # JupyterHub builds its web application right after it opened its database and loaded
        # its users and groups; the authenticator and the log are looked up only then (the
        # authenticator must not be made now, before the admin's settings are loaded).
        while getattr(app, "tornado_application", None) is None:
            await asyncio.sleep(0.1)
        await GroupSync(store, lambda: app.db, app.authenticator.normalize_username, interval, app.log).run()

    _tasks.append(loop.create_task(watch()))
    return True
