"""Sharing a running server: the "Share my server" and "Shared with me" pages and their JSON API.

JupyterHub (5+) can grant a user or a group access to a running server, and make share codes
(links) that expire, but ships no page for it, and a user allowed to share (``shares!user``)
could share with anyone. So users get no sharing scope; they share here. Every request is held
to :mod:`labgpu.web.share_rules` (your own servers, your own groups or their members, access
only), then made with the service's token (:mod:`labgpu.web.hub_api`).

Routes (under /services/labgpu/):
  share                  page: my servers, whom each is shared with, share / revoke / links
  shared                 page: servers shared with me or my groups, their owner's GPUs, leave
  api/shares             GET my servers and their shares; POST {server, user|group} shares;
                         DELETE {server, user|group} revokes
  api/share-links        POST {server, expires_in} makes a link; DELETE {server} revokes all links
  api/shared-with-me     GET; DELETE {owner, server} leaves a share made with me (not my group's)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any, NoReturn

from tornado import web

from labgpu.db.ledger import Ledger
from labgpu.labels import server_label
from labgpu.web.base import BaseHandler, WebContext
from labgpu.web.hub_api import HubApi, HubApiError
from labgpu.web.share_rules import (
    LINK_LIFETIMES,
    ShareRefused,
    check_share,
    link_lifetime,
    parse_server,
    parse_target,
    shareable_members,
)


def hub_api(context: WebContext) -> HubApi:
    """The service's Hub API client (one per service)."""
    api = context.extra.get("hub_api")
    if api is None:
        api = context.extra["hub_api"] = HubApi()
    return api


def ledger(context: WebContext) -> Ledger:
    """The ledger, opened once (read here: which GPUs a shared server holds)."""
    opened = context.extra.get("sharing_ledger")
    if opened is None:
        opened = context.extra["sharing_ledger"] = Ledger(context.ledger_url, migrate=False)
    return opened


def gpus_of(the_ledger: Ledger, servers: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
    """Each (owner, server)'s GPUs as people name them: ``GPU 0 (H100)``, ... (blocking)."""
    wanted = set(servers)
    named: dict[tuple[str, str], list[str]] = {s: [] for s in wanted}
    for holding in the_ledger.holdings():
        allocation = holding.allocation
        if allocation is None or (allocation.user, allocation.server) not in wanted:
            continue
        gpu = holding.gpu
        model = f" ({gpu.model})" if gpu.model else ""
        named[(allocation.user, allocation.server)].append(f"GPU {gpu.index}{model}")
    return named


class ScriptOrPageHandler(BaseHandler):
    """A route for scripts (``Authorization: token ...``, no XSRF token needed once the hub
    accepts the token) and for our pages (session cookie, ``X-XSRFToken``): see
    :meth:`BaseHandler.check_xsrf_cookie`."""


class SharingHandler(ScriptOrPageHandler):
    """What both pages share: the hub client, request bodies, errors as messages."""

    @property
    def hub(self) -> HubApi:
        return hub_api(self.context)

    def body(self) -> dict[str, Any]:
        try:
            value = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "The request body must be JSON.") from None
        if not isinstance(value, dict):
            raise web.HTTPError(400, "The request body must be a JSON object.")
        return value

    def refuse(self, error: ShareRefused | HubApiError) -> NoReturn:
        status = error.status if isinstance(error, ShareRefused) else (404 if error.status == 404 else 502)
        raise web.HTTPError(status, str(error))

    async def group_members(self, groups: Sequence[str]) -> dict[str, list[str]]:
        members = await asyncio.gather(*(self.hub.group_members(g) for g in groups))
        return dict(zip(groups, members, strict=True))

    async def my_servers(self) -> dict[str, dict[str, Any]]:
        """The viewer's running (or starting) servers, by name."""
        model = await self.hub.user(self.viewer.name)
        return dict(model.get("servers") or {})

    async def sharing_state(self) -> dict[str, Any]:
        """My servers with their shares and links, and whom I may share with."""
        me = self.viewer
        servers = await self.my_servers()
        names = sorted(servers)
        shares, links, members = await asyncio.gather(
            asyncio.gather(*(self.hub.server_shares(me.name, n) for n in names)),
            asyncio.gather(*(self.hub.share_codes(me.name, n) for n in names)),
            self.group_members(me.groups),
        )
        rows = []
        for name, granted, codes in zip(names, shares, links, strict=True):
            rows.append(
                {
                    "name": name,
                    "label": server_label(me.name, name),
                    "url": servers[name].get("url"),
                    "ready": bool(servers[name].get("ready")),
                    "shared_with": [
                        {"kind": s["kind"], "name": (s.get("user") or s.get("group") or {}).get("name")}
                        for s in granted
                    ],
                    "links": [
                        {
                            "id": c.get("id"),
                            "expires_at": c.get("expires_at"),
                            "exchange_count": c.get("exchange_count", 0),
                        }
                        for c in codes
                    ],
                }
            )
        return {
            "user": me.name,
            "servers": rows,
            "groups": list(me.groups),
            "members": shareable_members(me.name, me.groups, members),
            "link_lifetimes": LINK_LIFETIMES,
        }


class SharePage(SharingHandler):
    @web.authenticated
    async def get(self) -> None:
        try:
            state = await self.sharing_state()
        except HubApiError as e:
            self.refuse(e)
        self.render_page("sharing_share.html", title="Share my server", state=state)


class SharesApi(SharingHandler):
    @web.authenticated
    async def get(self) -> None:
        try:
            self.write_json(await self.sharing_state())
        except HubApiError as e:
            self.refuse(e)

    async def _checked(self) -> tuple[str, Any]:
        """The server (one of the viewer's: the owner is always the viewer) and the target."""
        body = self.body()
        try:
            return parse_server(body.get("server")), parse_target(body)
        except ShareRefused as e:
            self.refuse(e)

    @web.authenticated
    async def post(self) -> None:
        server, target = await self._checked()
        me = self.viewer
        try:
            members = await self.group_members(me.groups) if target.kind == "user" else {}
            check_share(me.name, me.groups, target, members)
            if server not in await self.my_servers():
                raise ShareRefused(f"You have no running server {server_label(me.name, server)!r} to share.", 404)
            share = await self.hub.grant(me.name, server, target.as_hub_body())
        except (ShareRefused, HubApiError) as e:
            self.refuse(e)
        self.write_json({"server": server, target.kind: target.name, "scopes": share.get("scopes", [])}, 201)

    @web.authenticated
    async def delete(self) -> None:
        server, target = await self._checked()
        try:
            await self.hub.revoke(self.viewer.name, server, target.as_hub_body())
        except HubApiError as e:
            self.refuse(e)
        self.write_json({"server": server, "revoked": {target.kind: target.name}})


class ShareLinksApi(SharingHandler):
    @web.authenticated
    async def post(self) -> None:
        body = self.body()
        me = self.viewer
        try:
            server = parse_server(body.get("server"))
            expires_in = link_lifetime(body.get("expires_in", LINK_LIFETIMES["1 day"]))
            if server not in await self.my_servers():
                raise ShareRefused(f"You have no running server {server_label(me.name, server)!r} to share.", 404)
            code = await self.hub.make_share_code(me.name, server, expires_in)
        except (ShareRefused, HubApiError) as e:
            self.refuse(e)
        accept_url = code.get("full_accept_url") or f"{self.request.protocol}://{self.request.host}{code['accept_url']}"
        self.write_json({"server": server, "accept_url": accept_url, "expires_at": code.get("expires_at")}, 201)

    @web.authenticated
    async def delete(self) -> None:
        try:
            server = parse_server(self.body().get("server"))
            await self.hub.revoke_share_codes(self.viewer.name, server)
        except (ShareRefused, HubApiError) as e:
            self.refuse(e)
        self.write_json({"server": server, "links_revoked": True})


class SharedWithMeHandler(SharingHandler):
    async def shared_with_me(self) -> list[dict[str, Any]]:
        """Servers shared with me or with my groups, each once, with the owner's GPUs."""
        me = self.viewer
        direct, by_group = await asyncio.gather(
            self.hub.shared_with_user(me.name),
            asyncio.gather(*(self.hub.shared_with_group(g) for g in me.groups)),
        )
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for group, shares in [(None, direct), *zip(me.groups, by_group, strict=True)]:
            for share in shares:
                server = share.get("server") or {}
                owner = (server.get("user") or {}).get("name", "")
                key = (owner, server.get("name", ""))
                row = rows.setdefault(
                    key,
                    {
                        "owner": owner,
                        "server": key[1],
                        "label": server_label(*key),
                        "url": server.get("url"),
                        "ready": bool(server.get("ready")),
                        "with_me": False,
                        "via_groups": [],
                    },
                )
                if group is None:
                    row["with_me"] = True
                else:
                    row["via_groups"].append(group)
        gpus = await self.in_thread(gpus_of, ledger(self.context), list(rows)) if rows else {}
        for key, row in rows.items():
            row["gpus"] = gpus.get(key, [])
        return sorted(rows.values(), key=lambda r: (r["owner"], r["server"]))


class SharedPage(SharedWithMeHandler):
    @web.authenticated
    async def get(self) -> None:
        try:
            rows = await self.shared_with_me()
        except HubApiError as e:
            self.refuse(e)
        self.render_page("sharing_shared.html", title="Shared with me", rows=rows)


class SharedWithMeApi(SharedWithMeHandler):
    @web.authenticated
    async def get(self) -> None:
        try:
            self.write_json({"user": self.viewer.name, "shared": await self.shared_with_me()})
        except HubApiError as e:
            self.refuse(e)

    @web.authenticated
    async def delete(self) -> None:
        """Leave a share made with me by name (a share with my group is the owner's to revoke)."""
        body = self.body()
        owner = str(body.get("owner") or "")
        try:
            server = parse_server(body.get("server"))
            if not owner:
                raise ShareRefused("Say whose server to leave: {owner, server}.", 400)
            await self.hub.leave(self.viewer.name, owner, server)
        except HubApiError as e:
            if e.status == 404:
                raise web.HTTPError(
                    404,
                    f"{server_label(owner, server)} is not shared with you by name; a server shared with your "
                    "group stays shared until its owner revokes it.",
                ) from None
            self.refuse(e)
        except ShareRefused as e:
            self.refuse(e)
        self.write_json({"left": server_label(owner, server)})


def routes() -> list[tuple[str, type[web.RequestHandler]]]:
    return [
        (r"share", SharePage),
        (r"shared", SharedPage),
        (r"api/shares", SharesApi),
        (r"api/share-links", ShareLinksApi),
        (r"api/shared-with-me", SharedWithMeApi),
    ]
