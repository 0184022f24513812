"""The Hub REST API as the labgpu web service calls it, with the service's own token.

The sharing pages (:mod:`labgpu.web.sharing`) and the group pages (:mod:`labgpu.web.groups`)
check what a user may do first, then act here with the service's token: its role
(``labgpu-web`` in jupyterhub_config.py) holds ``shares`` and ``delete:servers``, which users do
not hold themselves. Every call goes through :meth:`HubApi.call`; a refusal or an unreachable
hub becomes :class:`HubApiError` with the hub's own message.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError


class HubApiError(RuntimeError):
    """The hub refused a call or could not be reached; ``status`` is its HTTP status (502: no answer)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def q(name: str) -> str:
    """A user, group or server name as one URL path segment."""
    return quote(name, safe="")


class HubApi:
    """The hub's API at ``url`` (``JUPYTERHUB_API_URL``) with ``token`` (``JUPYTERHUB_API_TOKEN``)."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 20.0):
        self.url = (url or os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")).rstrip("/")
        self.token = token if token is not None else os.environ.get("JUPYTERHUB_API_TOKEN", "")
        self.timeout = timeout

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """``method path`` with a JSON ``body``; the JSON answer (None for 204)."""
        try:
            response = await AsyncHTTPClient().fetch(
                self.url + path,
                method=method,
                headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
                body=None if body is None and method in ("GET", "DELETE") else json.dumps(body or {}),
                allow_nonstandard_methods=True,
                request_timeout=self.timeout,
            )
        except HTTPClientError as e:
            message = e.message or str(e)
            if e.response is not None and e.response.body:
                with contextlib.suppress(ValueError, AttributeError):
                    message = json.loads(e.response.body).get("message") or message
            raise HubApiError(e.code, f"the hub answered {e.code}: {message}") from None
        except OSError as e:
            raise HubApiError(502, f"the hub's API did not answer: {e}") from None
        if response.code == 204 or not response.body:
            return None
        return json.loads(response.body)

    @staticmethod
    def items(answer: Any) -> list[dict[str, Any]]:
        """The list of a paginated answer (``{"items": [...]}``) or of a plain list."""
        if isinstance(answer, dict):
            return list(answer.get("items") or [])
        return list(answer or [])

    # -- users, groups, servers ----------------------------------------------------------------

    async def user(self, name: str) -> dict[str, Any]:
        return await self.call("GET", f"/users/{q(name)}")  # type: ignore[no-any-return]

    async def group_members(self, group: str) -> list[str]:
        """The hub's members of ``group`` ([] when the hub has no such group)."""
        try:
            model = await self.call("GET", f"/groups/{q(group)}")
        except HubApiError as e:
            if e.status == 404:
                return []
            raise
        return sorted(model.get("users") or [])

    async def stop_server(self, user: str, server: str) -> None:
        path = f"/users/{q(user)}/servers/{q(server)}" if server else f"/users/{q(user)}/server"
        await self.call("DELETE", path)

    # -- shares ----------------------------------------------------------------------------------

    async def server_shares(self, owner: str, server: str) -> list[dict[str, Any]]:
        return self.items(await self.call("GET", f"/shares/{q(owner)}/{q(server)}"))

    async def grant(self, owner: str, server: str, body: dict[str, str]) -> dict[str, Any]:
        """Share with ``body``'s user or group; no scopes given: JupyterHub's default, access only."""
        return await self.call("POST", f"/shares/{q(owner)}/{q(server)}", body)  # type: ignore[no-any-return]

    async def revoke(self, owner: str, server: str, body: dict[str, str]) -> None:
        await self.call("PATCH", f"/shares/{q(owner)}/{q(server)}", body)

    async def share_codes(self, owner: str, server: str) -> list[dict[str, Any]]:
        return self.items(await self.call("GET", f"/share-codes/{q(owner)}/{q(server)}"))

    async def make_share_code(self, owner: str, server: str, expires_in: int) -> dict[str, Any]:
        answer = await self.call("POST", f"/share-codes/{q(owner)}/{q(server)}", {"expires_in": expires_in})
        return answer  # type: ignore[no-any-return]

    async def revoke_share_codes(self, owner: str, server: str) -> None:
        await self.call("DELETE", f"/share-codes/{q(owner)}/{q(server)}")

    async def shared_with_user(self, user: str) -> list[dict[str, Any]]:
        return self.items(await self.call("GET", f"/users/{q(user)}/shared"))

    async def shared_with_group(self, group: str) -> list[dict[str, Any]]:
        try:
            return self.items(await self.call("GET", f"/groups/{q(group)}/shared"))
        except HubApiError as e:
            if e.status == 404:
                return []
            raise

    async def leave(self, user: str, owner: str, server: str) -> None:
        await self.call("DELETE", f"/users/{q(user)}/shared/{q(owner)}/{q(server)}")
