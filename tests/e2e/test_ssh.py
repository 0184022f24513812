"""SSH into a workspace with the real OpenSSH client (ssh, scp, sftp) through the hub's gateway
(LABGPU_SSH=on), against the real hub, proxy, Docker engine and workspace image.

Alice registers her key on the hub's SSH keys API, starts her default server and a named one
(gpu1), then: commands with their output and exit status, a token as the password (OpenSSH's
askpass), a PTY shell that follows the window size, scp and sftp, a local forward to her
JupyterLab; refused: another key, a wrong token, bob's token, forwards elsewhere, bob in her
workspace, and, last, a user with too many failed logins. One hub for the module; the tests run
in file order.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import secrets
import select
import shutil
import socket
import struct
import subprocess
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from labgpu.labels import LABEL_SERVER, LABEL_USER
from tests.conftest import require
from tests.harness import TEST_QUOTAS, HubClient, HubProcess, free_port, wait_until

pytestmark = pytest.mark.e2e

QUOTAS = TEST_QUOTAS.replace("images: [pytorch]}", "images: [pytorch], named_servers: 1}")
assert QUOTAS != TEST_QUOTAS


@dataclass
class World:
    hub: HubProcess
    port: int
    tmp: Path
    alice: HubClient
    bob: HubClient
    keys: dict[str, Path]  # private key files: alice's, bob's, and one nobody registered

    def argv(self, tool: str = "ssh", *, key: str | None = None, token: bool = False, log: str = "ERROR") -> list[str]:
        """``tool``'s options for the gateway; ``log``: INFO shows why a channel was refused and the banner."""
        port = ["-P" if tool in ("scp", "sftp") else "-p", str(self.port)]
        argv = [tool, *port, "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        argv += ["-o", "ConnectTimeout=20", "-o", f"LogLevel={log}"]
        if token:
            argv += ["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password"]
            argv += ["-o", "NumberOfPasswordPrompts=1"]
        else:
            argv += ["-i", str(self.keys[key or "alice"]), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
            argv += ["-o", "PreferredAuthentications=publickey"]
        return argv

    def env(self, token: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        if token is not None:  # OpenSSH reads the password from the askpass program, no terminal needed
            env.update(SSH_ASKPASS=str(self.tmp / "askpass"), SSH_ASKPASS_REQUIRE="force", LABGPU_TEST_TOKEN=token)
        return env

    def ssh(
        self,
        login: str,
        command: str | None = None,
        *,
        key: str | None = None,
        token: str | None = None,
        log: str = "ERROR",
        options: tuple[str, ...] = (),
        input: bytes | None = None,
        timeout: float = 90,
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [*self.argv(key=key, token=token is not None, log=log), *options, f"{login}@127.0.0.1"]
        return subprocess.run(
            argv + ([command] if command is not None else []),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            env=self.env(token),
            timeout=timeout,
        )


def text(done: subprocess.CompletedProcess[bytes]) -> str:
    return done.stdout.decode(errors="replace")


def service(person: HubClient, method: str, path: str, **kwargs) -> requests.Response:
    """The labgpu web service's JSON API as ``person`` (their own token)."""
    headers = {"Authorization": f"token {person.token}"}
    url = f"{person.hub.url}/services/labgpu/api/{path}"
    return requests.request(method, url, headers=headers, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def world(real_parts, request, tmp_path_factory):
    for tool in ("ssh", "scp", "sftp", "ssh-keygen"):
        require(shutil.which(tool) is not None, f"the OpenSSH client ({tool})", "apt-get install openssh-client")
    tmp = tmp_path_factory.mktemp("ssh")
    keys = {}
    for name in ("alice", "bob", "stranger"):
        keys[name] = tmp / f"id_{name}"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@laptop", "-f", keys[name]], check=True
        )
    askpass = tmp / "askpass"
    askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$LABGPU_TEST_TOKEN"\n')
    askpass.chmod(0o700)
    port = free_port()
    hub = HubProcess(quotas=QUOTAS, extra_env={"LABGPU_SSH": "on", "LABGPU_SSH_PORT": str(port)})
    try:
        hub.start()
        alice, bob = hub.client("alice"), hub.client("bob")
        for server in ("", "gpu1"):
            assert alice.start_server(server).status_code in (201, 202)
        world = World(hub, port, tmp, alice, bob, keys)
        for person in (alice, bob):  # the SSH keys API of the hub's web service (up once the hub is)
            line = Path(f"{keys[person.user]}.pub").read_text()
            added = wait_until(
                lambda p=person, k=line: service(p, "POST", "ssh-keys", json={"public_key": k}),
                60,
                "the SSH keys API",
                interval=0.5,
            )
            assert added.status_code == 201, added.text
        for server in ("", "gpu1"):
            alice.wait_ready(server)
        wait_until(lambda: _answers(port), 30, "the SSH gateway to listen")
        yield world
    finally:
        if request.session.testsfailed:
            print(f"\n--- hub log ({hub.hub_id}) ---\n{hub.log_tail(150)}")
        hub.cleanup()


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        return s.recv(16).startswith(b"SSH-2.0-")
    return False


def container(world: World, user: str, server: str = ""):
    [found] = [c for c in world.hub.containers(**{LABEL_USER: user}) if c.labels.get(LABEL_SERVER, "") == server]
    return found


# --- keys, commands, exit status --------------------------------------------------------------------


def test_the_keys_api_shows_the_fingerprint_and_refuses_a_bad_key_or_another_users_keys(world):
    listed = service(world.alice, "GET", "ssh-keys").json()
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", f"{world.keys['alice']}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert [k["fingerprint"] for k in listed["keys"]] == [fingerprint]
    assert listed["gateway"] == {"host": "127.0.0.1", "port": world.port}
    bad = service(world.alice, "POST", "ssh-keys", json={"public_key": "ssh-rsa AAAAB3NzaC1yc2E= short"})
    assert bad.status_code == 400 and "damaged" in bad.json()["message"]
    nosy = service(world.bob, "GET", "ssh-keys?user=alice")
    assert nosy.status_code == 403 and "only your own SSH keys" in nosy.json()["message"]
    page = world.alice.session.get(f"{world.hub.url}/services/labgpu/ssh-keys", timeout=60)
    assert page.status_code == 200 and fingerprint in page.text
    assert f"ssh -p {world.port} alice@127.0.0.1" in page.text


def test_a_key_login_runs_python_in_the_workspace_as_its_user_with_its_environment(world):
    done = world.ssh(
        "alice",
        "python -c \"import os, torch; print(torch.__version__, os.getuid(), os.environ['JUPYTERHUB_USER'])\";hostname",
        timeout=300,  # importing torch takes a minute on a loaded 2-core machine
    )
    assert done.returncode == 0, done.stderr
    version, uid, user, hostname = text(done).split()
    workspace = container(world, "alice")
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", version)
    assert (uid, user) == (workspace.attrs["Config"]["User"].split(":")[0], "alice")
    assert hostname == workspace.attrs["Config"]["Hostname"]


def test_a_commands_exit_status_and_stderr_come_back_and_stdin_ends_where_the_input_does(world):
    failing = world.ssh("alice", "echo oops >&2; exit 3")
    assert (failing.returncode, failing.stderr.decode()) == (3, "oops\n")
    assert world.ssh("alice", "python -c 'import sys; sys.exit(42)'").returncode == 42
    counted = world.ssh("alice", "wc -c", input=secrets.token_bytes(300_000))
    assert (counted.returncode, text(counted).strip()) == (0, "300000")


def test_a_hub_token_is_a_password_openssh_can_give(world):
    done = world.ssh("alice", "echo in-$JUPYTERHUB_USER", token=world.alice.token)
    assert (done.returncode, text(done)) == (0, "in-alice\n"), done.stderr


def test_a_key_or_token_that_is_not_alices_is_refused(world):
    for refused in (
        world.ssh("alice", "true", key="stranger"),
        world.ssh("alice", "true", key="bob"),
        world.ssh("alice.gpu1", "true", key="bob"),
        world.ssh("alice", "true", token="not-a-token"),
        world.ssh("alice", "true", token=world.bob.token),
    ):
        assert refused.returncode == 255 and b"Permission denied" in refused.stderr, refused.stderr


def test_bob_gets_his_own_server_only_and_is_told_it_is_not_running(world):
    done = world.ssh("bob", "true", key="bob")
    assert done.returncode == 1
    assert "Your server bob is not running. Start it in the browser: " in done.stderr.decode()
    assert f"{world.hub.url}/hub/spawn/bob" in done.stderr.decode()


def test_user_dot_server_reaches_the_named_server(world):
    done = world.ssh("alice.gpu1", "echo $JUPYTERHUB_SERVER_NAME; hostname")
    assert done.returncode == 0, done.stderr
    assert text(done).split() == ["gpu1", container(world, "alice", "gpu1").attrs["Config"]["Hostname"]]


# --- an interactive shell ---------------------------------------------------------------------------


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _read_until(fd: int, pattern: bytes, seen: bytearray, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while pattern not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"never saw {pattern!r} in the terminal: {bytes(seen[-500:])!r}")
        if select.select([fd], [], [], min(left, 0.5))[0]:
            with contextlib.suppress(OSError):
                seen += os.read(fd, 65536)


def test_an_interactive_shell_has_a_pty_that_follows_the_window_size(world):
    master, slave = pty.openpty()
    _set_size(slave, 40, 100)

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(  # a terminal of its own, as when a person types `ssh -p 2222 alice@hub`
        [*world.argv(), "alice@127.0.0.1"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=world.env(),
        preexec_fn=controlling_terminal,  # the test's own child, no threads involved
    )
    os.close(slave)
    seen = bytearray()
    try:
        os.write(master, b"stty size; tty\n")
        _read_until(master, b"40 100", seen)
        _read_until(master, b"/dev/pts/", seen)
        _set_size(master, 50, 120)  # the kernel tells ssh (SIGWINCH), ssh tells the gateway

        def resized() -> bool:
            os.write(master, b"stty size\n")
            with contextlib.suppress(AssertionError):
                _read_until(master, b"50 120", seen, timeout=1)
                return True
            return False

        wait_until(resized, 30, "the workspace's terminal to be 50x120")
        os.write(master, b"exit 5\n")
        assert proc.wait(30) == 5
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


# --- files ----------------------------------------------------------------------------------------------


def test_scp_copies_a_file_up_and_back(world):
    up, back = world.tmp / "up.bin", world.tmp / "back.bin"
    up.write_bytes(secrets.token_bytes(3_000_000))
    sent = subprocess.run(
        [*world.argv("scp"), str(up), "alice@127.0.0.1:work/up.bin"], capture_output=True, env=world.env(), timeout=90
    )
    assert sent.returncode == 0, sent.stderr
    got = subprocess.run(
        [*world.argv("scp"), "alice@127.0.0.1:work/up.bin", str(back)], capture_output=True, env=world.env(), timeout=90
    )
    assert got.returncode == 0, got.stderr
    assert back.read_bytes() == up.read_bytes()
    owner = world.ssh("alice", "stat -c %u work/up.bin; id -u")
    assert len(set(text(owner).split())) == 1  # written by the workspace's own user


def test_sftp_lists_the_home(world):
    batch = world.tmp / "batch"
    batch.write_text(f"put {world.tmp / 'askpass'} via-sftp.txt\npwd\nls -1\n")
    done = subprocess.run(
        [*world.argv("sftp"), "-b", str(batch), "alice@127.0.0.1"], capture_output=True, env=world.env(), timeout=90
    )
    assert done.returncode == 0, done.stderr
    assert "Remote working directory: /home/jovyan" in text(done)
    assert {"via-sftp.txt", "work"} <= set(text(done).split())


# --- forwarding -----------------------------------------------------------------------------------------


def test_a_local_forward_reaches_jupyterlab_inside_the_workspace(world):
    local = free_port()
    forward = subprocess.Popen(
        [*world.argv(), "-N", "-o", "ExitOnForwardFailure=yes", "-L", f"{local}:localhost:8888", "alice@127.0.0.1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=world.env(),
    )
    try:

        def answers() -> dict | None:
            if forward.poll() is not None:
                raise AssertionError(f"ssh -L exited: {forward.stderr.read().decode()}")
            with contextlib.suppress(requests.RequestException):
                r = requests.get(f"http://127.0.0.1:{local}/user/alice/api", timeout=5)
                return r.json() if r.status_code == 200 else None
            return None

        assert "version" in wait_until(answers, 30, "JupyterLab through ssh -L")
    finally:
        forward.terminate()
        forward.wait(10)


@pytest.mark.parametrize("target", ["1.1.1.1:80", "example.org:443", "HUB_API", "OTHER_WORKSPACE"])
def test_a_forward_to_anything_but_the_workspace_is_refused(world, target):
    if target == "HUB_API":  # the hub's own API, on the workspace network's gateway
        networks = container(world, "alice").attrs["NetworkSettings"]["Networks"]
        target = f"{next(iter(networks.values()))['Gateway']}:{world.hub.hub_port}"
    elif target == "OTHER_WORKSPACE":  # alice's other server, a neighbour on the network
        networks = container(world, "alice", "gpu1").attrs["NetworkSettings"]["Networks"]
        target = f"{next(iter(networks.values()))['IPAddress']}:8888"
    done = world.ssh("alice", log="INFO", options=("-W", target))
    assert done.returncode == 255
    assert b"administratively prohibited" in done.stderr and b"only ports inside your workspace" in done.stderr


def test_a_forward_to_a_closed_port_says_nothing_answers(world):
    done = world.ssh("alice", log="INFO", options=("-W", "localhost:9"))
    assert done.returncode == 255 and b"nothing answers on localhost:9 in your workspace" in done.stderr


# --- the audit log and the failed-login limit (last: it locks bob out) ---------------------------------------


def test_each_session_and_forward_leaves_an_audit_line(world):
    audit = (world.hub.state_dir / "ssh-audit.log").read_text()
    assert re.search(r"session user=alice server=- from=127\.0\.0\.1 auth=publickey SHA256:\S+ exec .*exit=3 ", audit)
    assert re.search(r"session user=alice server=- from=127\.0\.0\.1 auth=token exec ", audit)
    assert re.search(r"session user=alice server=gpu1 .* exec ", audit)
    assert re.search(r"session user=alice .* sftp exit=0 ", audit)
    assert re.search(r"session user=alice .* shell exit=5 ", audit)
    assert re.search(r"forward user=alice .* target=localhost:8888 bytes_out=[1-9]", audit)
    assert "forward refused user=alice server=- from=127.0.0.1 auth=publickey" in audit


def test_too_many_failed_logins_lock_that_user_out_from_that_address(world):
    for _ in range(5):
        assert world.ssh("bob", "true", token="wrong-" + secrets.token_hex(8)).returncode == 255
    locked = world.ssh("bob", "true", key="bob", log="INFO")
    assert locked.returncode == 255
    assert b"Too many failed logins for bob from 127.0.0.1: try again in" in locked.stderr
    assert world.ssh("alice", "true").returncode == 0  # others are not locked out
