"""The SSH gateway's rules: which server a login name means, where a forward may go, how failed
logins are limited, what a user reads when their server is not running, which tokens let in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labgpu.ssh.access import (
    FailedLogins,
    ForwardRefused,
    ServerRef,
    forward_target,
    login_candidates,
    not_running_message,
    server_for_user,
    token_grants_access,
)
from labgpu.ssh.hub_api import HubApi


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


@pytest.mark.parametrize("login", ["", "   ", "a b", "alice/gpu1", "x" * 600])
def test_names_no_hub_user_can_have_mean_nothing(login):
    assert login_candidates(login) == []


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
