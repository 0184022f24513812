"""A page per lab group: its members, its GPU pool (held now / size) and who holds which of its
GPUs, its queue, GPU-hours this week per member, and its shared folder and size. The group's
managers (``managers:`` in the quota files) and the hub's admins may also stop a member's server
that holds the group's GPUs while they sit idle.

Who sees a group page: its members, its managers and the admins (403 otherwise). What counts for a
group is what the ledger charged to it (the spawn option "group", :mod:`labgpu.quota.spawn_options`).

Routes (under /services/labgpu/):
  groups                       my groups (links)
  groups/NAME                  the group page
  api/groups/NAME              the same as JSON
  api/groups/NAME/stop         POST {user, server}: a manager stops a member's idle GPU server
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tornado import web

from labgpu.db.disk_store import VolumeSizeStore
from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import QueueStore
from labgpu.db.telemetry_store import TelemetryDB
from labgpu.labels import server_label
from labgpu.quota import Policy, resolve
from labgpu.quota.spawn_options import default_group
from labgpu.quota.volumes import group_volume_name
from labgpu.units import format_size
from labgpu.web.base import WebContext
from labgpu.web.hub_api import HubApiError
from labgpu.web.sharing import ScriptOrPageHandler, hub_api

WEEK = 7 * 86400.0
IDLE_WINDOW = 600.0  # seconds of telemetry a "stop idle server" looks at (less for a newer server)
IDLE_BELOW = 0.05  # busy fraction under which the GPUs count as idle


@dataclass(frozen=True)
class GroupStores:
    """The ledger's stores the group pages read, opened once per service."""

    ledger: Ledger
    queue: QueueStore
    telemetry: TelemetryDB
    sizes: VolumeSizeStore


def stores(context: WebContext) -> GroupStores:
    opened = context.extra.get("group_stores")
    if opened is None:
        the_ledger = Ledger(context.ledger_url, migrate=False)
        opened = context.extra["group_stores"] = GroupStores(
            the_ledger,
            QueueStore(the_ledger),
            TelemetryDB(context.ledger_url, migrate=False),
            VolumeSizeStore(context.ledger_url, migrate=False),
        )
    return opened


def charged_group(policy: Policy | None, user: str, recorded: str = "", hub_groups: Sequence[str] = ()) -> str | None:
    """The group a request or a held interval counts for: the one recorded with it (the spawn's
    choice) while the user is still in it, else the user's default (as the GPU queue decides)."""
    if policy is None:
        return recorded or None
    limits = resolve(policy, user, hub_groups)
    return recorded if recorded in limits.groups else default_group(limits)


def group_report(
    found: GroupStores, policy: Policy | None, group: str, members: list[str], hub_id: str
) -> dict[str, Any]:
    """Everything the group page shows (blocking: the ledger)."""
    entry = policy.spec.groups.get(group) if policy is not None else None
    now = found.ledger.now()
    holders = []
    held = 0
    by_uuid = {h.gpu.uuid: h.gpu for h in found.ledger.holdings()}
    for allocation in found.ledger.allocations():
        if allocation.group != group or not allocation.gpu_uuids:
            continue
        held += len(allocation.gpu_uuids)
        since = max(allocation.since, now - timedelta(seconds=IDLE_WINDOW))
        busy = found.telemetry.busy_fraction(allocation.gpu_uuids, since.timestamp(), now.timestamp())
        holders.append(
            {
                "user": allocation.user,
                "server": allocation.server,
                "label": allocation.server_label,
                "gpus": [
                    f"GPU {by_uuid[u].index}" + (f" ({by_uuid[u].model})" if by_uuid[u].model else "")
                    if u in by_uuid
                    else u
                    for u in allocation.gpu_uuids
                ],
                "since": allocation.since,
                "busy": busy,
                "idle": busy is not None and busy < IDLE_BELOW,
            }
        )
    waiting = [
        {"label": e.server_label, "user": e.user, "gpus": e.gpus, "since": e.submitted_at}
        for e in found.queue.waiting()
        if charged_group(policy, e.user, e.group, e.groups) == group
    ]
    week_start = now - timedelta(seconds=WEEK)
    hours: dict[str, float] = dict.fromkeys(members, 0.0)
    for interval in found.queue.held_intervals(week_start, now):
        if (interval.group or charged_group(policy, interval.user)) != group:
            continue
        end = min(interval.end or now, now)
        seconds = max(0.0, (end - max(interval.start, week_start)).total_seconds())
        hours[interval.user] = hours.get(interval.user, 0.0) + seconds * interval.gpus / 3600
    folder = None
    if entry is not None and entry.shared_volume:
        name = group if entry.shared_volume is True else str(entry.shared_volume)
        volume = group_volume_name(hub_id, name)
        size = found.sizes.sizes([volume]).get(volume)
        folder = {
            "path": f"/shared/{group}",
            "volume": volume,
            "size": format_size(size.size) if size else None,
            "measured_at": size.measured_at if size else None,
            "limit": format_size(entry.shared_disk) if entry.shared_disk else None,
        }
    return {
        "group": group,
        "members": members,
        "managers": list(entry.managers) if entry is not None else [],
        "pool": {"size": entry.pool if entry is not None else None, "held": held},
        "holders": holders,
        "queue": waiting,
        "gpu_hours_week": [{"user": u, "hours": round(h, 2)} for u, h in sorted(hours.items(), key=lambda x: -x[1])],
        "shared_folder": folder,
        "at": now,
    }


class GroupHandler(ScriptOrPageHandler):
    def hub_id(self) -> str:
        return os.environ.get("LABGPU_HUB_ID", "labgpu")

    async def members(self, group: str) -> list[str]:
        try:
            return await hub_api(self.context).group_members(group)
        except HubApiError as e:
            raise web.HTTPError(502, str(e)) from None

    def may_manage(self, group: str) -> bool:
        return self.viewer.admin or group in self.viewer.manages

    async def checked_report(self, group: str) -> dict[str, Any]:
        """The report of ``group``, for its members, managers and the admins only."""
        policy = self.context.policy
        if policy is not None and group not in policy.spec.groups:
            raise web.HTTPError(404, f"There is no group {group!r} in the quota files.")
        members = await self.members(group)
        me = self.viewer
        if not (me.admin or group in me.manages or group in me.groups or me.name in members):
            self.forbid(f"Only the members and managers of {group} see its page.")
        report = await self.in_thread(group_report, stores(self.context), policy, group, members, self.hub_id())
        report["may_stop"] = self.may_manage(group)
        return report


class GroupsPage(GroupHandler):
    @web.authenticated
    async def get(self) -> None:
        me = self.viewer
        groups = sorted(set(me.groups) | set(me.manages))
        self.render_page("groups_list.html", title="My groups", groups=groups)


class GroupPage(GroupHandler):
    @web.authenticated
    async def get(self, group: str) -> None:
        report = await self.checked_report(group)
        self.render_page("groups_group.html", title=f"Group {group}", report=report)


class GroupApi(GroupHandler):
    @web.authenticated
    async def get(self, group: str) -> None:
        self.write_json(await self.checked_report(group))


class StopIdleServerApi(GroupHandler):
    """A manager (or admin) stops a member's server that holds the group's GPUs while they sit idle."""

    @web.authenticated
    async def post(self, group: str) -> None:
        if not self.may_manage(group):
            self.forbid(f"Only the managers of {group} (and the hub's admins) may stop its members' servers.")
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "The request body must be a JSON object: {user, server}.")
        user, server = str(body.get("user") or ""), str(body.get("server") or "")
        report = await self.checked_report(group)
        holder = next((h for h in report["holders"] if (h["user"], h["server"]) == (user, server)), None)
        label = server_label(user, server)
        if holder is None:
            raise web.HTTPError(404, f"{label} holds none of {group}'s GPUs.")
        if user not in report["members"]:
            self.forbid(f"{user} is not a member of {group}.")
        if not holder["idle"]:
            busy = holder["busy"]
            why = "no GPU telemetry yet" if busy is None else f"its GPUs were {busy:.0%} busy lately"
            self.forbid(f"{label} is not idle ({why}); only a server whose GPUs sit idle may be stopped.")
        try:
            await hub_api(self.context).stop_server(user, server)
        except HubApiError as e:
            raise web.HTTPError(502, str(e)) from None
        self.write_json({"stopped": label, "by": self.viewer.name, "at": time.time()}, 202)


def routes() -> list[tuple[str, type[web.RequestHandler]]]:
    return [
        (r"groups", GroupsPage),
        (r"groups/([^/]+)", GroupPage),
        (r"api/groups/([^/]+)", GroupApi),
        (r"api/groups/([^/]+)/stop", StopIdleServerApi),
    ]
