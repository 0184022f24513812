"""The SSH gateway: an asyncssh server whose every session runs inside the user's workspace.

One :class:`GatewayConnection` per SSH connection authenticates the login name (``alice``,
``alice.gpu1``: :mod:`labgpu.ssh.access`) with a registered public key (the ledger's
``ssh_keys``) or a hub API token as the password (``GET /hub/api/user`` says whose it is and
whether it may use the server). Then, per channel:

- a session (:class:`WorkspaceSession`): a shell with a PTY (window size changes follow the
  client), a command (its exit status is the session's), or the ``sftp`` subsystem (the
  image's ``sftp-server``; OpenSSH 9's ``scp`` speaks sftp too), each a Docker exec in the
  workspace container as its user with its environment;
- a ``direct-tcpip`` forward (:class:`ForwardSession`): a relay started inside the workspace
  connects to ``localhost:PORT`` there; any other address is refused.

The server (hub + Docker) is looked up for each channel, so a server stopped meanwhile is said
to be stopped, with how to start it. Failed logins are limited per user and source; each
session and forward leaves one audit line (who, from where, how authenticated, what, how long,
exit status) in the log and, if given, an audit file. Nothing here blocks the event loop:
Docker and the hub are called in worker threads, exec streams are asyncio connections.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shlex
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from labgpu.db.ssh_key_store import SshKeyStore
from labgpu.ssh.access import (
    MAX_AUTH_TRIES,
    FailedLogins,
    ForwardRefused,
    ServerRef,
    forward_target,
    login_candidates,
    not_running_message,
    server_for_user,
    token_grants_access,
)
from labgpu.ssh.docker_exec import RELAY, SFTP_SERVER, STDERR, DockerExec, DockerExecError, ExecStream, Workspace
from labgpu.ssh.hub_api import HubApi, HubUnavailable
from labgpu.ssh.keys import fingerprint

log = logging.getLogger("labgpu.ssh")
audit_log = logging.getLogger("labgpu.ssh.audit")

# What a client may pass into the workspace's environment besides TERM (as sshd's AcceptEnv).
ACCEPTED_ENV = ("LANG", "LANGUAGE", "COLORTERM")
ACCEPTED_ENV_PREFIX = "LC_"


@dataclass
class Gateway:
    """What every connection shares: the hub, Docker, the keys, the limiter, the public URL."""

    hub: HubApi
    docker: DockerExec
    keys: SshKeyStore
    hub_url: str  # the hub's public URL, for "start your server at ..."
    failures: FailedLogins = field(default_factory=FailedLogins)
    audit_file: Path | None = None
    clock: Callable[[], float] = time.monotonic

    def audit(self, line: str) -> None:
        audit_log.info(line)
        if self.audit_file is not None:
            try:
                with open(self.audit_file, "a", encoding="utf-8") as f:
                    f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}\n")
            except OSError as e:
                log.warning("cannot write the audit file %s: %s", self.audit_file, e)

    def note_key_used(self, user: str, key_fingerprint: str) -> None:
        try:
            self.keys.mark_used(user, key_fingerprint)
        except Exception as e:  # the database busy or gone: the login goes on
            log.warning("cannot note the use of %s's key %s: %s", user, key_fingerprint, e)

    async def workspace(self, ref: ServerRef) -> Workspace | str:
        """The running workspace of ``ref``, or what to tell the user instead."""
        try:
            servers = await self.hub.servers(ref.user)
        except HubUnavailable as e:
            log.warning("%s", e)
            return "The hub does not answer right now; try again in a minute.\n"
        state = (servers or {}).get(ref.server)
        if state is None or not state.ready:
            return not_running_message(ref, self.hub_url, state.pending if state else None)
        try:
            found = await self.docker.find_workspace(ref.user, ref.server)
        except Exception as e:  # Docker down or refusing: say so, never drop the gateway
            log.warning("Docker: cannot look up %s's workspace: %s", ref.label, e)
            return "The workspace cannot be reached right now (Docker does not answer); try again in a minute.\n"
        return found or not_running_message(ref, self.hub_url)


async def start_gateway(gateway: Gateway, host: str, port: int, host_key: Path) -> asyncssh.SSHAcceptor:
    """Listen on ``host:port`` with the host key at ``host_key`` (made on first start)."""
    key = load_or_create_host_key(host_key)
    log.info("SSH gateway on %s:%d, host key %s %s", host, port, key.get_algorithm(), key.get_fingerprint())
    return await asyncssh.create_server(
        lambda: GatewayConnection(gateway),
        host,
        port,
        server_host_keys=[key],
        encoding=None,  # bytes in, bytes out: sessions carry binary data (sftp, forwards)
        allow_pty=True,
        agent_forwarding=False,
        x11_forwarding=False,
        login_timeout=60,
        keepalive_interval=60,
        server_version="LabGPU",
    )


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """The gateway's ed25519 host key; a new one (mode 0600) when the file does not exist yet."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="labgpu-ssh-gateway")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
        path.with_name(path.name + ".pub").write_bytes(key.export_public_key())
        log.info("made a new host key %s", path)
        return key
    if path.stat().st_mode & 0o077:
        log.warning("the host key %s is readable by others: chmod 600 %s", path, path)
    return asyncssh.read_private_key(str(path))


# ============================================================================================
# One SSH connection: authentication, then its channels
# ============================================================================================


class GatewayConnection(asyncssh.SSHServer):
    """One client: who they are (after auth), which server, and the channels they open."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.source = "?"
        self.login = ""
        self.ref: ServerRef | None = None  # set once authenticated
        self.method = ""  # "publickey SHA256:..." or "token"
        self.rejected_keys = 0  # keys refused (each counted as a failed login if none gets in)
        self.tries = 0  # keys and passwords refused: the connection closes at MAX_AUTH_TRIES
        self._key_answers: dict[tuple[str, bytes], tuple[ServerRef, str] | None] = {}
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.source = str(peer[0])

    def connection_lost(self, exc: Exception | None) -> None:
        # Refused keys count as failed logins only now, when no credential got in: an agent
        # offering a user's other keys before the right one does not lock them out.
        if self.ref is None and self.rejected_keys:
            for ref in login_candidates(self.login)[:1]:
                for _ in range(self.rejected_keys):
                    self.gateway.failures.record(ref.user, self.source)
            log.info("login refused: %r from %s (%d keys not theirs)", self.login, self.source, self.rejected_keys)

    def begin_auth(self, username: str) -> bool:
        self.login = username
        candidates = login_candidates(username)
        if not candidates:
            self._banner(f"{username[:60]!r} is not a hub user name (log in as USER or USER.SERVERNAME).")
            return True
        wait = self.gateway.failures.blocked_for(candidates[0].user, self.source)
        if wait:
            self._banner(
                f"Too many failed logins for {candidates[0].user} from {self.source}: try again in {wait:.0f} s."
            )
        return True

    def _banner(self, message: str) -> None:
        if self.conn is not None:
            self.conn.send_auth_banner(message + "\r\n")

    def _blocked(self) -> bool:
        candidates = login_candidates(self.login)
        return not candidates or bool(self.gateway.failures.blocked_for(candidates[0].user, self.source))

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Called for the client's query and again for its signed request: answered once per key.
        blob = key.public_data
        if (username, blob) not in self._key_answers:
            if self.tries >= MAX_AUTH_TRIES:  # not reached: asyncssh closes on the exception
                raise asyncssh.PermissionDenied("Too many authentication failures")
            self._key_answers[username, blob] = await self._registered_key(username, blob)
        found = self._key_answers[username, blob]
        if found is None:
            self.rejected_keys += 1
            self._count_try()
            return False
        self.ref, self.method = found  # final only once asyncssh has checked the signature
        return True

    async def _registered_key(self, username: str, blob: bytes) -> tuple[ServerRef, str] | None:
        """The server and method a key lets in as: registered for a user the login may name, who
        still exists in the hub; None when it is nobody's (or the pair is locked out)."""
        if self._blocked():
            return None
        encoded = base64.b64encode(blob).decode()
        for ref in login_candidates(username):
            keys = await asyncio.to_thread(self.gateway.keys.keys, ref.user)
            match = next((k for k in keys if k.public_key.split()[1:2] == [encoded]), None)
            if match and await self._hub_user_exists(ref.user):
                return ref, f"publickey {match.fingerprint}"
        log.info("key %s offered for %r from %s is not theirs", fingerprint(blob), username, self.source)
        return None

    def _count_try(self) -> None:
        """One more refused key or password; past :data:`MAX_AUTH_TRIES` the connection is
        closed (asyncssh sends the disconnect for the exception), as OpenSSH's MaxAuthTries."""
        self.tries += 1
        if self.tries >= MAX_AUTH_TRIES:
            log.info("login refused: %r from %s (%d tries, disconnected)", self.login, self.source, self.tries)
            raise asyncssh.PermissionDenied("Too many authentication failures")

    def password_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        if self._blocked():
            self._count_try()
            return False
        candidates = login_candidates(username)
        try:
            owner = await self.gateway.hub.token_owner(password.strip()) if password.strip() else None
        except HubUnavailable as e:
            log.warning("token login of %r: %s", username, e)
            self._banner("The hub does not answer right now; try again in a minute.")
            self._count_try()
            return False
        ref = server_for_user(username, owner.name) if owner and owner.kind == "user" else None
        if owner is None or ref is None or not token_grants_access(owner.scopes, ref):
            self.gateway.failures.record(candidates[0].user, self.source)
            why = "unknown token" if owner is None else f"a token of {owner.name}" if ref is None else "no access scope"
            log.info("login refused: %r from %s (%s)", username, self.source, why)
            self._count_try()
            return False
        self.ref, self.method = ref, "token"
        return True

    async def _hub_user_exists(self, user: str) -> bool:
        try:
            return await self.gateway.hub.servers(user) is not None
        except HubUnavailable as e:
            log.warning("key login of %s: %s", user, e)
            return False

    def auth_completed(self) -> None:
        assert self.ref is not None
        log.info("login: %s (%s) from %s", self.ref.label, self.method, self.source)
        if self.method.startswith("publickey "):  # the page shows when each key was last used
            _background(asyncio.to_thread(self.gateway.note_key_used, self.ref.user, self.method.split()[1]))

    def session_requested(self) -> WorkspaceSession:
        assert self.ref is not None
        return WorkspaceSession(self)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> Any:
        assert self.ref is not None
        return self._open_forward(dest_host, dest_port)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False  # remote forwarding (-R) would open ports on the gateway: not offered

    def describe(self) -> str:
        assert self.ref is not None
        return f"user={self.ref.user} server={self.ref.server or '-'} from={self.source} auth={self.method}"

    async def _open_forward(self, host: str, port: int) -> ForwardSession:
        assert self.ref is not None
        found = await self.gateway.workspace(self.ref)
        if isinstance(found, str):
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, found.strip())
        try:
            target = forward_target(host, port, found.addresses, (found.hostname, found.container_id[:12]))
        except ForwardRefused as e:
            self.gateway.audit(f"forward refused {self.describe()} target={host}:{port}")
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, str(e)) from None
        try:
            stream = await self.gateway.docker.start(found, ["python3", "-c", RELAY, target, str(port)], tty=False)
        except (DockerExecError, OSError) as e:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(e)) from None
        early: list[bytes] = []  # stdout may overtake the "+" on stderr (Docker copies them apart)
        while (frame := await stream.read()) is not None:
            kind, data = frame
            if kind != STDERR:
                early.append(data)
            elif data.startswith(b"+"):
                return ForwardSession(self, stream, f"{host}:{port}", early)
            else:
                stream.close()
                raise asyncssh.ChannelOpenError(
                    asyncssh.OPEN_CONNECT_FAILED,
                    f"nothing answers on {host}:{port} in your workspace ({data.decode(errors='replace').strip()})",
                )
        stream.close()
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, f"the relay to {host}:{port} ended at once")


_tasks: set[asyncio.Task[None]] = set()


def _background(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` on the loop, holding a reference until it is done (asyncio keeps only weak ones)."""
    task = asyncio.ensure_future(work)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


# ============================================================================================
# Channels: a session (shell, command, sftp) and a forward, both pumping an exec stream
# ============================================================================================


class _Pump:
    """Copy an exec stream to an SSH channel with flow control both ways."""

    def __init__(self) -> None:
        self.chan: Any = None
        self.stream: ExecStream | None = None
        self.pending: list[bytes] = []  # input that came before the exec started
        self.input_eof = False
        self.copied = 0  # bytes of output sent to the client
        self._writable = asyncio.Event()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if self.stream is None:
            self.pending.append(data)
        elif self.stream.write(data):
            self.chan.pause_reading()
            _background(self._drain())

    async def _drain(self) -> None:
        assert self.stream is not None
        await self.stream.drain()
        self.chan.resume_reading()

    def eof_received(self) -> bool:
        self.input_eof = True
        if self.stream is not None:
            self.stream.write_eof()
        return True  # keep sending the output

    def attach(self, stream: ExecStream) -> None:
        """The exec is running: send what came early, then everything as it comes."""
        self.stream = stream
        for data in self.pending:
            stream.write(data)
        self.pending.clear()
        if self.input_eof:
            stream.write_eof()

    async def copy_output(self, early: Sequence[bytes] = ()) -> None:
        """Copy the exec's output to the channel until it ends, counting the bytes (``copied``)."""
        assert self.stream is not None
        for data in early:
            self.chan.write(data)
            self.copied += len(data)
        while (frame := await self.stream.read()) is not None:
            kind, data = frame
            if kind == STDERR:
                self.chan.write_stderr(data)
            else:
                self.chan.write(data)
            self.copied += len(data)
            await self._writable.wait()


class WorkspaceSession(_Pump, asyncssh.SSHServerSession[bytes]):
    """A shell, a command or sftp, run in the workspace by Docker exec."""

    def __init__(self, connection: GatewayConnection) -> None:
        _Pump.__init__(self)
        self.connection = connection
        self.kind, self.command = "shell", ""
        self.term_type: str | None = None
        self.term_size = (0, 0)
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any) -> bool:
        self.term_type, self.term_size = term_type, (term_size[0], term_size[1])
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self.kind, self.command = "exec", command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        self.kind = "sftp"
        return subsystem == "sftp"

    def session_started(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self.term_size = (width, height)
        if self.stream is not None and self.stream.tty:
            _background(self.connection.gateway.docker.resize(self.stream.exec_id, width, height))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _exec_command(self) -> tuple[list[str], bool]:
        """What to run, and whether with a PTY: the user's shell as sshd runs it."""
        tty = self.term_type is not None and self.kind != "sftp"
        if self.kind == "sftp":
            return [SFTP_SERVER], False
        if self.kind == "exec":
            return ["/bin/sh", "-c", 'exec "${SHELL:-/bin/sh}" -c "$1"', "sh", self.command], tty
        # Not a login shell: Debian's /etc/profile would replace the image's PATH (conda, venvs).
        return ["/bin/sh", "-c", 'exec "${SHELL:-/bin/sh}"'], tty

    def _environment(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.term_type:
            env["TERM"] = self.term_type[:64]
        for name, value in (self.chan.get_environment() or {}).items():
            name = name.decode() if isinstance(name, bytes) else str(name)
            value = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            if (name in ACCEPTED_ENV or name.startswith(ACCEPTED_ENV_PREFIX)) and len(value) < 256:
                env[name] = value
        return env

    async def _run(self) -> None:
        gateway, ref = self.connection.gateway, self.connection.ref
        assert ref is not None
        started = gateway.clock()
        what = {"shell": "shell", "sftp": "sftp", "exec": f"exec {shlex.quote(self.command[:200])}"}[self.kind]
        status: int | None = 1
        workspace: Workspace | None = None
        try:
            found = await gateway.workspace(ref)
            if isinstance(found, str):
                self.chan.write_stderr(found.encode())
                return
            workspace = found
            await gateway.docker.ensure_account(found)
            command, tty = self._exec_command()
            try:
                stream = await gateway.docker.start(found, command, tty=tty, environment=self._environment())
            except (DockerExecError, OSError) as e:
                self.chan.write_stderr(f"Cannot start a session in your workspace: {e}\n".encode())
                return
            self.attach(stream)
            if tty:
                await gateway.docker.resize(stream.exec_id, *self.term_size)
            await self.copy_output()
            status = await gateway.docker.exit_code(stream.exec_id)
            stream.close()
        except asyncio.CancelledError:  # the client went away: hang up what still runs
            status = None
            if self.stream is not None and workspace is not None:
                self.stream.close()
                await gateway.docker.hang_up(workspace, self.stream.exec_id)
            raise
        finally:
            seconds = gateway.clock() - started
            gateway.audit(f"session {self.connection.describe()} {what} exit={status} seconds={seconds:.1f}")
            if status is not None or not self.chan.is_closing():
                with contextlib.suppress(Exception):
                    self.chan.exit(status if status is not None else 255)


class ForwardSession(_Pump, asyncssh.SSHTCPSession[bytes]):
    """A forwarded connection, relayed by a process inside the workspace."""

    def __init__(self, connection: GatewayConnection, stream: ExecStream, target: str, early: list[bytes]) -> None:
        _Pump.__init__(self)
        self.connection, self.target, self.early = connection, target, early
        self._stream = stream
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, chan: Any) -> None:
        self.chan = chan
        self.attach(self._stream)
        self._task = asyncio.ensure_future(self._run())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._stream.close()

    async def _run(self) -> None:
        gateway = self.connection.gateway
        started = gateway.clock()
        try:
            await self.copy_output(self.early)
            self.chan.write_eof()
        finally:  # also when the client closed the channel first (the task is cancelled)
            gateway.audit(
                f"forward {self.connection.describe()} target={self.target} "
                f"bytes_out={self.copied} seconds={gateway.clock() - started:.1f}"
            )
            self._stream.close()
            with contextlib.suppress(Exception):
                self.chan.close()
