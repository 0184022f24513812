"""The pages (GPU board, my usage, lab usage) and the JSON API behind each, with the same login
and the same checks: a user sees their own usage, admins everyone's, a group's managers the lab
page for their group (403 otherwise). Each page's figures are its API's JSON, rendered."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from tornado import web

from labgpu.units import gpus_text
from labgpu.web import svg
from labgpu.web.accounting import PERIODS, lab_usage, my_usage, table_csv, usage_csv
from labgpu.web.base import BaseHandler
from labgpu.web.data import Cached, Stores, board_for, board_snapshot, my_servers
from labgpu.web.estimates import spawn_estimates

TOP_USERS = 50  # users in the lab page's table (largest first); the CSV and JSON have them all


class PageHandler(BaseHandler):
    """A handler with the service's stores (made once) and the period argument."""

    @property
    def stores(self) -> Stores:
        extra = self.context.extra
        if "stores" not in extra:
            extra["stores"] = Stores(self.context.ledger_url, lambda: self.context.policy)
            extra["board"] = Cached(2.0)
        return extra["stores"]  # type: ignore[no-any-return]

    def days(self) -> int:
        period = self.get_argument("period", "30d")
        if period not in PERIODS:
            raise web.HTTPError(400, f"period must be one of {', '.join(PERIODS)} (got {period!r})")
        return PERIODS[period]

    async def board(self) -> dict[str, Any]:
        stores = self.stores
        snapshot = await self.in_thread(self.context.extra["board"].get, lambda: board_snapshot(stores))
        return board_for(snapshot, self.viewer, self.context.policy)

    def usage_user(self) -> str:
        user = self.get_argument("user", self.viewer.name)
        if not self.viewer.may_see_user(user):
            self.forbid(f"You may see only your own usage (asked for {user!r}).")
        return user

    def lab_group(self) -> str | None:
        group = self.get_argument("group", None) or None
        if group is None and not self.viewer.admin and len(self.viewer.manages) == 1:
            group = self.viewer.manages[0]
        self.require_lab_view(group)
        return group

    def send_csv(self, text: str, filename: str) -> None:
        self.set_header("Content-Type", "text/csv; charset=UTF-8")
        self.set_header("Content-Disposition", f'attachment; filename="{filename}"')
        self.finish(text)


def _bars(per_day: list[dict[str, Any]]) -> list[svg.Bar]:
    return [
        svg.Bar(date.fromisoformat(d["day"]).strftime("%m-%d"), d["gpu_hours_held"], d["gpu_hours_busy"])
        for d in per_day
    ]


# --- GPUs ------------------------------------------------------------------------------------
class BoardPage(PageHandler):
    @web.authenticated
    async def get(self) -> None:
        board = await self.board()
        for gpu in board["gpus"]:
            gpu["spark"] = svg.sparkline(
                gpu["util_last_hour"], label=f"GPU {gpu['label']} utilization over the last hour"
            )
        self.render_page("board.html", title="GPUs", board=board, gpus_text=gpus_text)


class BoardApi(PageHandler):
    @web.authenticated
    async def get(self) -> None:
        self.write_json(await self.board())


class EstimateApi(PageHandler):
    """Free GPUs now and the estimated wait for each GPU count the viewer may ask for (the spawn page)."""

    @web.authenticated
    async def get(self) -> None:
        stores, viewer = self.stores, self.viewer
        self.write_json(await self.in_thread(spawn_estimates, stores, self.context.policy, viewer.name, viewer.groups))


class MeApi(PageHandler):
    """My servers' GPUs and queue places and my limits (the hub's home page shows them)."""

    @web.authenticated
    async def get(self) -> None:
        board = await self.board()
        self.write_json(my_servers(board, self.viewer, self.context.policy))


class HubPageScript(PageHandler):
    """``api/me.js`` and ``api/estimate.js``: the same JSON as a script that sets
    ``window.labgpu.me`` / ``window.labgpu.estimate``, for the hub's own pages (home, spawn). A
    script is a same-origin "no-cors" request, which the hub's OAuth cookie may authenticate
    without the service's XSRF token (a page under /hub/ cannot read it: fetch() would be
    refused); cross-site pages cannot use it (JupyterHub's XSRF rules refuse those)."""

    async def data(self) -> Any:
        raise NotImplementedError

    @web.authenticated
    async def get(self) -> None:
        name = type(self).__name__.removesuffix("Script").lower()
        value = json.dumps(await self.data())
        self.set_header("Content-Type", "text/javascript; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(f"window.labgpu = window.labgpu || {{}};\nwindow.labgpu.{name} = {value};\n")


class MeScript(HubPageScript):
    async def data(self) -> Any:
        return my_servers(await self.board(), self.viewer, self.context.policy)


class EstimateScript(HubPageScript):
    async def data(self) -> Any:
        viewer = self.viewer
        return await self.in_thread(spawn_estimates, self.stores, self.context.policy, viewer.name, viewer.groups)


# --- my usage --------------------------------------------------------------------------------
class UsagePage(PageHandler):
    @web.authenticated
    async def get(self) -> None:
        user, days = self.usage_user(), self.days()
        usage = await self.in_thread(my_usage, self.stores, user, days)
        chart = svg.held_busy_chart(_bars(usage["per_day"]), title=f"GPU-hours of {user} per day, last {days} days")
        self.render_page("usage.html", title="My usage", usage=usage, chart=chart, period=f"{days}d", periods=PERIODS)


class UsageApi(PageHandler):
    @web.authenticated
    async def get(self) -> None:
        user, days = self.usage_user(), self.days()
        self.write_json(await self.in_thread(my_usage, self.stores, user, days))


class UsageCsv(PageHandler):
    @web.authenticated
    async def get(self) -> None:
        user, days = self.usage_user(), self.days()
        usage = await self.in_thread(my_usage, self.stores, user, days)
        if self.get_argument("what", "days") == "sessions":
            columns = ["server", "started_at", "ended_at", "image", "image_digest", "driver_version"]
            columns += ["cuda_version", "torch_version", "end_reason"]
            rows = [{**s, "gpus": ",".join(s["gpus"])} for s in usage["sessions"]]
            self.send_csv(table_csv(rows, [*columns, "gpus"]), f"labgpu-sessions-{user}.csv")
            return
        self.send_csv(
            table_csv(usage["per_day"], ["day", "gpu_hours_held", "gpu_hours_busy"]), f"labgpu-usage-{user}.csv"
        )


# --- lab usage -------------------------------------------------------------------------------
class LabPage(PageHandler):
    @web.authenticated
    async def get(self) -> None:
        group, days = self.lab_group(), self.days()
        lab = await self.in_thread(lab_usage, self.stores, self.context.policy, days, group)
        who = f"group {group}" if group else "the lab"
        charts = {
            "days": svg.held_busy_chart(_bars(lab["per_day"]), title=f"GPU-hours of {who} per day, last {days} days"),
            "users": svg.ranking_chart(
                [svg.Bar(r["name"], r["gpu_hours_held"], r["gpu_hours_busy"]) for r in lab["by_user"][:15]],
                title=f"GPU-hours per user, last {days} days (top 15)",
            ),
        }
        self.render_page(
            "lab.html", title="Lab usage", lab=lab, charts=charts, period=f"{days}d", periods=PERIODS, top=TOP_USERS
        )


class LabApi(PageHandler):
    @web.authenticated
    async def get(self) -> None:
        group, days = self.lab_group(), self.days()
        self.write_json(await self.in_thread(lab_usage, self.stores, self.context.policy, days, group))


class LabCsv(PageHandler):
    @web.authenticated
    async def get(self) -> None:
        group, days = self.lab_group(), self.days()
        by = self.get_argument("by", "user")
        if by not in ("user", "group"):
            raise web.HTTPError(400, f"by must be user or group (got {by!r})")
        lab = await self.in_thread(lab_usage, self.stores, self.context.policy, days, group)
        self.send_csv(usage_csv(lab[f"by_{by}"], by), f"labgpu-lab-by-{by}.csv")


def routes() -> list[tuple[str, type[web.RequestHandler]]]:
    return [
        (r"gpus", BoardPage),
        (r"api/gpus", BoardApi),
        (r"api/estimate", EstimateApi),
        (r"api/me", MeApi),
        (r"api/me\.js", MeScript),
        (r"api/estimate\.js", EstimateScript),
        (r"usage", UsagePage),
        (r"api/usage", UsageApi),
        (r"usage\.csv", UsageCsv),
        (r"lab", LabPage),
        (r"api/lab", LabApi),
        (r"lab\.csv", LabCsv),
    ]
