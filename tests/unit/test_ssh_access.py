"""The SSH gateway's rules: which server a login name means, where a forward may go, how failed
logins are limited, what a user reads when their server is not running, which tokens let in."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from types import SimpleNamespace

import asyncssh
import pytest
from hypothesis import given
from hypothesis import strategies as st

from labgpu.db.ssh_key_store import SshKey
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
from labgpu.ssh.docker_exec import ACCOUNT_PATH, DockerExec, Workspace
from labgpu.ssh.gateway import GatewayConnection
from labgpu.ssh.hub_api import HubApi

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_plain_login_is_the_users_default_server_lowercased_as_jupyterhub_does():
    assert login_candidates("Alice") == [ServerRef("alice")]


def test_user_dot_name_is_a_named_server_and_dotted_user_names_still_work():
    assert login_candidates("alice.gpu1") == [ServerRef("alice.gpu1"), ServerRef("alice", "gpu1")]
    assert login_candidates("jane.doe.GPU1") == [
        ServerRef("jane.doe.gpu1"),
        ServerRef("jane.doe", "GPU1"),  # server names keep their case
        ServerRef("jane", "doe.GPU1"),
    ]
    assert server_for_user("jane.doe.gpu1", "jane.doe") == ServerRef("jane.doe", "gpu1")
    assert server_for_user("jane.doe", "jane.doe") == ServerRef("jane.doe")
    assert server_for_user("alice.gpu1", "bob") is None


@pytest.mark.parametrize("login", ["", "   ", "a b", "alice/gpu1", "x" * 600, "x" * 65, "a.a.a.a.a", "a." * 255])
def test_names_no_hub_user_can_have_mean_nothing(login):
    assert login_candidates(login) == []


def test_a_login_name_has_a_few_readings_at_most_each_costing_one_key_look_up():
    assert len(login_candidates("x" * 64)) == 1
    assert [ref.label for ref in login_candidates("a.b.c.d")] == ["a.b.c.d", "a.b.c/d", "a.b/c.d", "a/b.c.d"]
    assert login_candidates("a.b.c.d.e") == []  # 4 dots: more than any user needs


@given(st.text(max_size=80))
def test_every_candidate_joins_back_into_the_login_name(login):
    for ref in login_candidates(login):
        assert ref.user == ref.user.lower()
        assert (ref.user + ("." + ref.server if ref.server else "")).lower() == login.strip().lower()


OWN = ("172.18.0.5",)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", "127.0.0.1"),
        ("LOCALHOST.", "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.53", "127.0.0.53"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("172.18.0.5", "172.18.0.5"),
        ("a1b2c3d4e5f6", "172.18.0.5"),  # the container's host name
    ],
)
def test_a_forward_reaches_the_workspace_itself(host, expected):
    assert forward_target(host, 8888, OWN, ("a1b2c3d4e5f6",)) == expected


@pytest.mark.parametrize(
    "host", ["172.18.0.1", "172.18.0.6", "10.0.0.1", "example.org", "0.0.0.0", "169.254.169.254", "hub", ""]
)
def test_a_forward_anywhere_else_is_refused_saying_what_works(host):
    with pytest.raises(ForwardRefused, match=r"only ports inside your workspace \(localhost:PORT"):
        forward_target(host, 80, OWN, ("a1b2c3d4e5f6",))


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_a_forward_to_no_port_is_refused(port):
    with pytest.raises(ForwardRefused, match="is not a TCP port"):
        forward_target("localhost", port, OWN)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_logins_block_that_user_from_that_source_until_the_window_passes():
    clock = Clock()
    failures = FailedLogins(per_user=3, per_source=100, window=600, clock=clock)
    for _ in range(2):
        failures.record("alice", "10.0.0.9")
        clock.now += 10
    assert failures.blocked_for("alice", "10.0.0.9") == 0
    failures.record("alice", "10.0.0.9")
    assert failures.blocked_for("alice", "10.0.0.9") == pytest.approx(580)  # the first failure leaves at 1600
    assert failures.blocked_for("alice", "10.0.0.10") == 0  # another source
    assert failures.blocked_for("bob", "10.0.0.9") == 0  # another user
    clock.now = 1600.0
    assert failures.blocked_for("alice", "10.0.0.9") == 0


def test_a_source_guessing_many_users_is_blocked_for_all_of_them():
    failures = FailedLogins(per_user=5, per_source=4, window=600, clock=Clock())
    for user in ("a", "b", "c", "d"):
        failures.record(user, "10.0.0.9")
    assert failures.blocked_for("e", "10.0.0.9") > 0
    assert failures.blocked_for("e", "10.0.0.10") == 0


def test_the_limiter_forgets_the_oldest_when_it_tracks_too_many():
    failures = FailedLogins(per_user=1, max_tracked=10, clock=Clock())
    for i in range(100):
        failures.record(f"u{i}", f"10.0.0.{i}")
    assert failures.blocked_for("u99", "10.0.0.99") > 0
    assert failures.blocked_for("u0", "10.0.0.0") == 0
    assert len(failures._failures) <= 10


def test_not_running_says_how_to_start_it_in_the_browser_and_over_the_api():
    text = not_running_message(ServerRef("alice", "gpu1"), "https://hub.lab.org/")
    assert (
        "Your server alice/gpu1 is not running. Start it in the browser: https://hub.lab.org/hub/spawn/alice/gpu1"
        in text
    )
    assert "curl -X POST -H 'Authorization: token TOKEN' https://hub.lab.org/hub/api/users/alice/servers/gpu1" in text
    assert "https://hub.lab.org/hub/api/users/alice/server\n" in not_running_message(
        ServerRef("alice"), "https://hub.lab.org"
    )
    assert "is spawning; try again when it is ready" in not_running_message(ServerRef("alice"), "http://h", "spawn")


def test_a_token_lets_in_only_with_access_to_that_server():
    alice, named = ServerRef("alice"), ServerRef("alice", "gpu1")
    assert token_grants_access({"access:servers!user=alice", "read:users"}, named)
    assert token_grants_access({"access:servers"}, alice)
    assert token_grants_access({"access:servers!server=alice/gpu1"}, named)
    assert not token_grants_access({"access:servers!server=alice/gpu1"}, alice)
    assert not token_grants_access({"read:users!user=alice", "servers!user=alice"}, alice)
    assert not token_grants_access({"access:servers!user=bob"}, alice)


@pytest.mark.parametrize("password", ["", "a\r\nX-Evil: 1", "two words", "é" * 10, "x" * 2000])
async def test_a_password_that_cannot_be_a_hub_token_is_refused_without_asking_the_hub(password):
    hub = HubApi("http://127.0.0.1:9/hub/api", "service-token", timeout=0.01)  # nothing listens: not asked
    assert await hub.token_owner(password) is None


# --------------------------------------------------------------------------------------------
# One connection's authentication (GatewayConnection, with fakes for the hub and the keys)
# --------------------------------------------------------------------------------------------


class _Keys:
    def __init__(self, registered: dict[str, list[bytes]]) -> None:
        self.registered, self.lookups = registered, 0

    def keys(self, user):
        self.lookups += 1
        return [
            SshKey(1, user, "SHA256:x", "ssh-ed25519", f"ssh-ed25519 {base64.b64encode(b).decode()}", "", NOW, None)
            for b in self.registered.get(user, [])
        ]


class _Hub:
    async def servers(self, user):
        return {}

    async def token_owner(self, token):
        return None


class _Conn:
    def send_auth_banner(self, message):
        pass


def _connection(registered=None):
    gateway = SimpleNamespace(failures=FailedLogins(clock=lambda: 0.0), keys=_Keys(registered or {}), hub=_Hub())
    connection = GatewayConnection(gateway)  # type: ignore[arg-type]
    connection.conn, connection.source = _Conn(), "10.0.0.9"  # type: ignore[assignment]
    return connection, gateway


def _key(blob: bytes):
    return SimpleNamespace(public_data=blob)


async def test_a_connection_is_closed_after_max_auth_tries_refused_keys_each_counted_as_a_failure():
    connection, gateway = _connection()
    connection.begin_auth("a.b.c")
    for n in range(MAX_AUTH_TRIES - 1):
        assert not await connection.validate_public_key("a.b.c", _key(b"k%d" % n))
    with pytest.raises(asyncssh.PermissionDenied, match="Too many authentication failures"):
        await connection.validate_public_key("a.b.c", _key(b"last"))
    assert gateway.keys.lookups == MAX_AUTH_TRIES * 3  # 3 readings of a.b.c per key, no more
    connection.connection_lost(None)
    assert gateway.failures.blocked_for("a.b.c", "10.0.0.9") > 0  # 6 failures > 5 per user
    fresh, _ = _connection()
    fresh.gateway = gateway
    assert not await fresh.validate_public_key("a.b.c", _key(b"k0"))  # blocked: not even looked up
    assert gateway.keys.lookups == MAX_AUTH_TRIES * 3


async def test_keys_an_agent_offers_before_the_right_one_do_not_count_when_it_gets_in():
    connection, gateway = _connection({"alice": [b"right"]})
    connection.begin_auth("alice")
    for blob in (b"other1", b"other2"):
        assert not await connection.validate_public_key("alice", _key(blob))
    assert await connection.validate_public_key("alice", _key(b"right"))
    connection.connection_lost(None)
    assert gateway.failures.blocked_for("", "10.0.0.9") == 0
    assert gateway.failures._failures == {}


async def test_each_refused_password_is_a_failure_and_the_sixth_try_closes_the_connection():
    connection, gateway = _connection()
    connection.begin_auth("bob")
    for _ in range(MAX_AUTH_TRIES - 1):
        assert not await connection.validate_password("bob", "a" * 32)
    with pytest.raises(asyncssh.PermissionDenied):
        await connection.validate_password("bob", "a" * 32)
    # each of the first five recorded at once; the sixth, from a blocked pair, not even checked
    assert len(gateway.failures._failures["bob", "10.0.0.9"]) == 5
    assert gateway.failures.blocked_for("bob", "10.0.0.9") > 0


class _Api:
    def __init__(self) -> None:
        self.created: list[tuple[str, list[str], dict]] = []

    def exec_create(self, container, command, **kwargs):
        self.created.append((container, command, kwargs))
        return {"Id": "exec1"}

    def exec_start(self, exec_id):
        return b""


async def test_the_account_is_added_as_root_with_absolute_paths_and_a_system_path_only():
    # The image's PATH (an admin's, maybe with a group-writable directory) is never searched as root.
    api = _Api()
    docker_exec = DockerExec("hub1", client=SimpleNamespace(api=api), docker_host="")
    workspace = Workspace("c1", "jane.doe", "", ("172.18.0.5",), "h", run_as="1234:100", home="/home/jovyan")
    await docker_exec.ensure_account(workspace)
    await docker_exec.ensure_account(workspace)  # once per container
    [(container, command, kwargs)] = api.created
    assert container == "c1" and kwargs["user"] == "0"
    assert kwargs["environment"] == {"PATH": ACCOUNT_PATH, "LC_ALL": "C"}
    assert ACCOUNT_PATH == "/usr/sbin:/usr/bin:/sbin:/bin"
    assert command[:2] == ["/bin/sh", "-c"] and command[3:] == ["sh", "1234", "jane.doe", "100", "/home/jovyan"]
    script = command[2]
    assert script.count("/usr/bin/getent passwd") == 2 and " getent" not in script.replace("/usr/bin/getent", "")
    assert "jane.doe" not in script  # the values are arguments, never part of the script
