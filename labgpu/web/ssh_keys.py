"""The "SSH keys" page and its JSON API: a user adds and removes the public keys the SSH gateway
(:mod:`labgpu.ssh`) lets in as them, each shown with its SHA256 fingerprint (as ``ssh-keygen -l``
prints it) and when it was last used; the page also shows the lines to type.

- ``GET  ssh-keys``: the page; ``POST ssh-keys`` (``action=add`` + ``public_key``, or
  ``action=remove`` + ``fingerprint``): the page's forms (XSRF-checked).
- ``GET  api/ssh-keys``: ``{"user", "keys": [...], "gateway": {"host", "port"} | null}``
- ``POST api/ssh-keys`` ``{"public_key": "ssh-ed25519 AAAA... me@laptop"}`` -> 201 and the key;
  400 with what is wrong (a private key, DSA, RSA under 2048 bits, a cut line, a duplicate).
- ``DELETE api/ssh-keys?fingerprint=SHA256:...`` -> 204, or 404.

Everyone manages their own keys; an admin may add ``?user=NAME`` to manage another user's
(403 for anyone else). Keys are checked by :mod:`labgpu.ssh.keys` and stored in the ledger's
database (:mod:`labgpu.db.ssh_key_store`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any

from tornado import web

from labgpu.db.ssh_key_store import SshKey, SshKeyStore
from labgpu.ssh.registry import register_key
from labgpu.web.sharing import ScriptOrPageHandler


class SshKeysHandler(ScriptOrPageHandler):
    """What the page and the API share: whose keys, the store, the gateway's address. Scripts
    with a token need no XSRF token; the page's forms carry one (:class:`ScriptOrPageHandler`)."""

    @property
    def store(self) -> SshKeyStore:
        extra = self.context.extra
        if "ssh_keys" not in extra:
            extra["ssh_keys"] = SshKeyStore(self.context.ledger_url)
        return extra["ssh_keys"]  # type: ignore[no-any-return]

    def owner(self) -> str:
        """Whose keys: the viewer's, or (admins only) ``?user=NAME``'s."""
        user = self.get_argument("user", self.viewer.name)
        if user != self.viewer.name and not self.viewer.admin:
            self.forbid(f"You may manage only your own SSH keys (asked for {user!r}).")
        return user

    def gateway(self) -> dict[str, Any] | None:
        """Where users connect: this page's host name and the gateway's port (None when it is off)."""
        port = os.environ.get("LABGPU_SSH_PORT", "")
        return {"host": self.request.host_name, "port": int(port)} if port.isdigit() else None

    async def add(self, user: str, line: str) -> SshKey:
        try:
            return await self.in_thread(register_key, self.store, user, line)
        except ValueError as e:
            raise web.HTTPError(400, str(e), reason="Bad Request") from None

    async def remove(self, user: str, fingerprint: str) -> None:
        if not await self.in_thread(self.store.remove, user, fingerprint):
            raise web.HTTPError(404, f"{user} has no SSH key {fingerprint[:80]!r}", reason="Not Found")


def key_json(key: SshKey) -> dict[str, Any]:
    return asdict(key)


class SshKeysPage(SshKeysHandler):
    @web.authenticated
    async def get(self) -> None:
        await self.show(self.owner())

    @web.authenticated
    async def post(self) -> None:
        user = self.owner()
        action = self.get_body_argument("action", "add")
        try:
            if action == "remove":
                await self.remove(user, self.get_body_argument("fingerprint", ""))
                message = "Key removed."
            else:
                key = await self.add(user, self.get_body_argument("public_key", ""))
                message = f"Key {key.fingerprint} added."
        except web.HTTPError as e:
            self.set_status(e.status_code)
            await self.show(user, error=e.log_message or "")
            return
        await self.show(user, message=message)

    async def show(self, user: str, message: str = "", error: str = "") -> None:
        keys = await self.in_thread(self.store.keys, user)
        self.render_page(
            "ssh_keys.html",
            title="SSH keys",
            owner=user,
            keys=keys,
            gateway=self.gateway(),
            message=message,
            error=error,
            query=f"?user={user}" if user != self.viewer.name else "",
        )


class SshKeysApi(SshKeysHandler):
    @web.authenticated
    async def get(self) -> None:
        user = self.owner()
        keys = await self.in_thread(self.store.keys, user)
        self.write_json({"user": user, "keys": [key_json(k) for k in keys], "gateway": self.gateway()})

    @web.authenticated
    async def post(self) -> None:
        user = self.owner()
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, 'the body must be JSON: {"public_key": "ssh-ed25519 AAAA..."}') from None
        line = body.get("public_key") if isinstance(body, dict) else None
        if not isinstance(line, str):
            raise web.HTTPError(400, 'the body must be JSON: {"public_key": "ssh-ed25519 AAAA..."}')
        key = await self.add(user, line)
        self.write_json(key_json(key), status=201)

    @web.authenticated
    async def delete(self) -> None:
        user = self.owner()
        await self.remove(user, self.get_argument("fingerprint", ""))
        self.set_status(204)
        self.finish()


def routes() -> list[tuple[str, type[web.RequestHandler]]]:
    return [(r"ssh-keys", SshKeysPage), (r"api/ssh-keys", SshKeysApi)]
