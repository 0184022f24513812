"""A workspace's container and processes run in it through Docker exec, for the SSH gateway.

The container is found by our labels (:mod:`labgpu.labels`): this hub's id, the user, the
server name; nothing else is ever exec'd into. A process runs as the container's own user, in
its working directory, with its environment (the GPUs it was granted, ``LABGPU_GPUS``, the
image's ``PATH``), like ``docker exec``.

Docker's SDK creates an exec, inspects and resizes it (in a worker thread: it blocks); the
stream itself is the Engine API's hijacked connection (``POST /exec/{id}/start`` with
``Upgrade: tcp``), opened here with asyncio so that a thousand idle shells cost no threads,
and so that stdin can be half-closed (``ssh host cmd < file`` ends at the file's end). Without
a TTY, Docker multiplexes stdout and stderr in frames of an 8-byte header and a payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import docker
import docker.errors

from labgpu.labels import LABEL_HUB, LABEL_SERVER, LABEL_USER, hub_filter

log = logging.getLogger("labgpu.ssh")

STDOUT, STDERR = 1, 2
_PASSWD_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
SFTP_SERVER = "/usr/lib/openssh/sftp-server"  # Debian's openssh-sftp-server, in the workspace image

# The relay for a forwarded port: runs inside the workspace (so "localhost" is the workspace's
# own loopback and nothing outside its network namespace is in reach), connects, says "+" on
# stderr, then copies stdin to the socket and the socket to stdout until the socket ends.
RELAY = r"""
import os, selectors, socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
except OSError as e:
    os.write(2, (e.strerror or str(e)).encode() + b"\n")
    sys.exit(1)
s.settimeout(None)
os.write(2, b"+\n")
sel = selectors.DefaultSelector()
sel.register(0, selectors.EVENT_READ)
sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj == 0:
            data = os.read(0, 262144)
            if data:
                s.sendall(data)
            else:
                sel.unregister(0)
                s.shutdown(socket.SHUT_WR)
        else:
            data = s.recv(262144)
            if not data:
                sys.exit(0)
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
"""


class DockerExecError(RuntimeError):
    """Docker refused or failed an exec; the message says what Docker said."""


@dataclass(frozen=True)
class Workspace:
    """A running workspace container of this hub."""

    container_id: str
    user: str
    server: str
    addresses: tuple[str, ...]  # its IP addresses on its networks
    hostname: str
    run_as: str = ""  # its user, "uid:gid" (Config.User)
    home: str = "/home/jovyan"


class DockerExec:
    """Exec into this hub's workspaces (``hub_id``: the ``org.labgpu.hub`` label to match)."""

    def __init__(self, hub_id: str, client: Any = None, docker_host: str | None = None) -> None:
        self.hub_id = hub_id
        self.client = client or docker.from_env()
        self.api = self.client.api
        self._endpoint = _endpoint(docker_host if docker_host is not None else os.environ.get("DOCKER_HOST", ""))
        self._accounts: set[str] = set()  # containers whose uid has a passwd entry (ensure_account)

    async def find_workspace(self, user: str, server: str) -> Workspace | None:
        """The user's running container for ``server`` ("" the default one), if any."""
        return await asyncio.to_thread(self._find, user, server)

    def _find(self, user: str, server: str) -> Workspace | None:
        filters = {"label": [hub_filter(self.hub_id), f"{LABEL_USER}={user}"], "status": "running"}
        for container in self.client.containers.list(filters=filters):
            labels = container.labels
            if labels.get(LABEL_HUB) != self.hub_id or labels.get(LABEL_USER) != user:
                continue
            if labels.get(LABEL_SERVER, "") != server:
                continue
            networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
            addresses = tuple(sorted({n.get("IPAddress") for n in networks.values() if n.get("IPAddress")}))
            config = container.attrs.get("Config", {})
            env = dict(e.partition("=")[::2] for e in config.get("Env") or [])
            return Workspace(
                container.id,
                user,
                server,
                addresses,
                config.get("Hostname", ""),
                str(config.get("User") or ""),
                env.get("HOME") or "/home/jovyan",
            )
        return None

    async def ensure_account(self, workspace: Workspace) -> None:
        """Give the workspace's uid an /etc/passwd entry (named after the hub user) if it has none,
        once per container: with a uid of its own per user the image knows no name for it, and
        ``sftp-server`` refuses to start without one (shells show "I have no name!"). A fixed
        command run as root in the container, which owns /etc/passwd (no capability needed)."""
        uid, _, gid = workspace.run_as.partition(":")
        if not uid.isdigit() or uid == "0" or workspace.container_id in self._accounts:
            return
        command, environment = account_command(workspace, uid, gid)
        try:
            created = await asyncio.to_thread(
                self.api.exec_create, workspace.container_id, command, user="0", environment=environment
            )
            await asyncio.to_thread(self.api.exec_start, created["Id"])
            self._accounts.add(workspace.container_id)
        except docker.errors.APIError as e:
            log.warning("cannot add an account for uid %s in %s: %s", uid, workspace.container_id[:12], e)

    async def start(
        self, workspace: Workspace, command: list[str], *, tty: bool, environment: dict[str, str] | None = None
    ) -> ExecStream:
        """Run ``command`` in the workspace with stdin open; its stream (a PTY's when ``tty``)."""
        try:
            created = await asyncio.to_thread(
                self.api.exec_create,
                workspace.container_id,
                command,
                stdin=True,
                stdout=True,
                stderr=True,
                tty=tty,
                environment=environment or None,
            )
        except docker.errors.APIError as e:
            raise DockerExecError(
                f"Docker refused to run {command[0]} in the workspace: {e.explanation or e}"
            ) from None
        exec_id = created["Id"]
        reader, writer = await self._connect()
        body = json.dumps({"Detach": False, "Tty": tty}).encode()
        writer.write(
            (
                f"POST /v{self.api.api_version}/exec/{exec_id}/start HTTP/1.1\r\nHost: docker\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
            ).encode()
            + body
        )
        status_line = await reader.readline()
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        status = status_line.split(b" ", 2)
        if len(status) < 2 or status[1] not in (b"101", b"200"):
            detail = await reader.read(int(headers.get("content-length", "0") or 0) or 2000)
            writer.close()
            raise DockerExecError(f"Docker could not start {command[0]} in the workspace: {status_line!r} {detail!r}")
        return ExecStream(self, exec_id, reader, writer, tty)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        kind, address = self._endpoint
        limit = 1 << 20
        if kind == "unix":
            return await asyncio.open_unix_connection(address, limit=limit)
        host, _, port = address.rpartition(":")
        return await asyncio.open_connection(host, int(port), limit=limit)

    async def resize(self, exec_id: str, width: int, height: int) -> None:
        """Set the PTY's size (the client's window: columns, rows)."""
        if width > 0 and height > 0:
            with contextlib.suppress(docker.errors.APIError):
                await asyncio.to_thread(self.api.exec_resize, exec_id, height=height, width=width)

    async def exit_code(self, exec_id: str, timeout: float = 5.0) -> int | None:
        """The exec's exit status once Docker has it (the stream ends a moment before)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                info = await asyncio.to_thread(self.api.exec_inspect, exec_id)
            except docker.errors.APIError:
                return None
            if not info.get("Running") or loop.time() > deadline:
                code = info.get("ExitCode")
                return int(code) if code is not None else None
            await asyncio.sleep(0.02)

    async def hang_up(self, workspace: Workspace, exec_id: str) -> None:
        """SIGHUP an exec still running after its client left (as sshd does to a session's
        processes), found through its host PID's namespace PID; best effort (the gateway must
        see the host's /proc, as it does beside the hub)."""
        try:
            info = await asyncio.to_thread(self.api.exec_inspect, exec_id)
            if not info.get("Running") or not info.get("Pid"):
                return
            status = Path(f"/proc/{int(info['Pid'])}/status").read_text()
            nspid = next(line.split()[-1] for line in status.splitlines() if line.startswith("NSpid:"))
            kill = await asyncio.to_thread(
                self.api.exec_create,
                workspace.container_id,
                ["/bin/sh", "-c", f"kill -HUP -{int(nspid)} 2>/dev/null || kill -HUP {int(nspid)}"],
            )
            await asyncio.to_thread(self.api.exec_start, kill["Id"])
        except (OSError, StopIteration, ValueError, docker.errors.APIError):
            return


class ExecStream:
    """The hijacked connection of one running exec: read its output, write its stdin."""

    def __init__(
        self, owner: DockerExec, exec_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tty: bool
    ) -> None:
        self.owner, self.exec_id, self.tty = owner, exec_id, tty
        self._reader, self._writer = reader, writer
        self._eof_sent = False

    async def read(self) -> tuple[int, bytes] | None:
        """The next output: ``(STDOUT or STDERR, bytes)``; None when the process closed it."""
        try:
            if self.tty:
                data = await self._reader.read(1 << 18)
                return (STDOUT, data) if data else None
            header = await self._reader.readexactly(8)
            size = int.from_bytes(header[4:8], "big")
            return (STDERR if header[0] == STDERR else STDOUT, await self._reader.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    def write(self, data: bytes) -> bool:
        """Send ``data`` to the process's stdin; True when the caller should :meth:`drain`."""
        if self._eof_sent or self._writer.is_closing():
            return False
        self._writer.write(data)
        return self._writer.transport.get_write_buffer_size() > (1 << 20)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    def write_eof(self) -> None:
        """Close the process's stdin (the stream stays open for its output)."""
        if not self._eof_sent and not self._writer.is_closing() and self._writer.can_write_eof():
            self._eof_sent = True
            with contextlib.suppress(OSError):
                self._writer.write_eof()

    def close(self) -> None:
        self._writer.close()


def _endpoint(docker_host: str) -> tuple[str, str]:
    """Where the Docker Engine API listens: ("unix", socket path) or ("tcp", "host:port")."""
    if not docker_host:
        return "unix", "/var/run/docker.sock"
    url = urlparse(docker_host)
    if url.scheme in ("unix", "npipe"):
        return "unix", url.path
    if url.scheme in ("tcp", "http") and not os.environ.get("DOCKER_TLS_VERIFY"):
        return "tcp", f"{url.hostname}:{url.port or 2375}"
    raise DockerExecError(
        f"the SSH gateway speaks to Docker over a unix socket or plain tcp:// only (DOCKER_HOST={docker_host!r}"
        f"{', DOCKER_TLS_VERIFY set' if os.environ.get('DOCKER_TLS_VERIFY') else ''}): run it beside the engine"
    )


# Root runs it in a container whose image (an admin's) sets the PATH: absolute paths and a PATH of
# system directories only, so no directory of the image's PATH (group-writable, say) is searched.
ACCOUNT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_ACCOUNT_SCRIPT = (
    '/usr/bin/getent passwd "$1" >/dev/null && exit 0; '
    'n="$2"; /usr/bin/getent passwd "$n" >/dev/null && n="u$1"; '
    'echo "$n:x:$1:$3:$n:$4:/bin/bash" >> /etc/passwd'
)


def account_command(workspace: Workspace, uid: str, gid: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment :meth:`DockerExec.ensure_account` runs as root: a fixed script
    (the values are its arguments, never part of it), absolute paths, :data:`ACCOUNT_PATH`."""
    name = workspace.user if _PASSWD_NAME.match(workspace.user) else f"u{uid}"
    args = [uid, name, gid if gid.isdigit() else "100", workspace.home]
    return ["/bin/sh", "-c", _ACCOUNT_SCRIPT, "sh", *args], {"PATH": ACCOUNT_PATH, "LC_ALL": "C"}
