"""The Hub REST API, as the gateway uses it: whose token a password is, and a user's servers.

Calls run in a worker thread (urllib) so the gateway's event loop never blocks on the hub. The
gateway's own token (``JUPYTERHUB_API_TOKEN``, a managed service's) needs only
``read:users:name`` and ``read:servers`` (:data:`HUB_API_SCOPES`); a user's token is checked
with the user's token itself (``GET /user``: every token may identify its owner).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote
from urllib.request import Request, urlopen

HUB_API_SCOPES = ("read:users:name", "read:servers")


class HubUnavailable(RuntimeError):
    """The hub did not answer (or answered something unexpected); the message says what."""


@dataclass(frozen=True)
class TokenOwner:
    """Whom a token belongs to and what it may do (its expanded scopes)."""

    kind: str  # "user" or "service"
    name: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class ServerState:
    """One of a user's servers as the hub sees it."""

    name: str
    ready: bool
    pending: str | None  # "spawn", "stop", ... while the hub is busy with it


class HubApi:
    """The Hub REST API at ``api_url`` (``http://127.0.0.1:8081/hub/api``) with the gateway's token."""

    def __init__(self, api_url: str, token: str, timeout: float = 10.0) -> None:
        self.api_url, self.token, self.timeout = api_url.rstrip("/"), token, timeout

    async def token_owner(self, token: str) -> TokenOwner | None:
        """Who ``token`` belongs to; None if the hub does not know it (or it expired)."""
        if not token or len(token) > 1024 or not token.isascii() or not token.isprintable() or " " in token:
            return None  # no token of the hub's looks like that (and it would not fit in a header)
        status, body = await asyncio.to_thread(self._get, "/user", token)
        if status in (401, 403, 404):
            return None
        model = _json(status, body, "/user")
        return TokenOwner(str(model.get("kind", "user")), str(model["name"]), frozenset(model.get("scopes") or ()))

    async def servers(self, user: str) -> dict[str, ServerState] | None:
        """The user's servers by name ("" is the default one); None if the hub has no such user."""
        path = f"/users/{quote(user, safe='')}"
        status, body = await asyncio.to_thread(self._get, path, self.token)
        if status == 404:
            return None
        model = _json(status, body, path)
        return {
            name: ServerState(name, bool(s.get("ready")), s.get("pending"))
            for name, s in (model.get("servers") or {}).items()
        }

    def _get(self, path: str, token: str) -> tuple[int, bytes]:
        request = Request(self.api_url + path, headers={"Authorization": f"token {token}"})
        try:
            with urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read()
        except HTTPError as e:
            return e.code, e.read()
        except (URLError, OSError) as e:
            raise HubUnavailable(f"the hub's API at {self.api_url} does not answer ({e})") from None


def _json(status: int, body: bytes, path: str) -> dict[str, Any]:
    if status != 200:
        raise HubUnavailable(f"the hub's API answered HTTP {status} to GET {path}: {body[:200]!r}")
    try:
        model = json.loads(body)
    except ValueError:
        raise HubUnavailable(f"the hub's API answered GET {path} with something that is not JSON") from None
    if not isinstance(model, dict):
        raise HubUnavailable(f"the hub's API answered GET {path} with {type(model).__name__}, not an object")
    return model
