"""What the hub's configuration decides on parsed values: demo mode's address, production's
authenticator class, the named-server limit from the policy, and container-start slots."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from types import SimpleNamespace

import pytest

from labgpu.hub import hub_limits
from labgpu.hub.hub_limits import ContainerStarts, named_server_limit, start_slot
from labgpu.hub.login_checks import authenticator_class, demo_address_problem, production_authenticator_problem
from labgpu.quota import PolicyStore


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://127.3.4.5:80/hub", "http://localhost:8000", "http://[::1]:8000"]
)
def test_demo_mode_may_listen_on_a_loopback_address(url):
    assert demo_address_problem(url) is None


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://127.0.0.1.evil.com:8000", "127.0.0.1.evil.com"),
        ("http://localhost.evil.com:8000", "localhost.evil.com"),
        ("http://127.0.0.1@evil.com:8000", "evil.com"),
        ("http://0.0.0.0:8000", "0.0.0.0"),
        ("http://10.0.0.5:8000", "10.0.0.5"),
    ],
)
def test_demo_mode_refuses_an_address_that_only_starts_like_localhost(url, host):
    assert demo_address_problem(url) == (
        f"demo mode has a shared password and listens on localhost only, but LABGPU_BIND_URL={url!r} has the "
        f"host {host!r} (use 127.0.0.1, [::1] or localhost); set LABGPU_MODE=production to serve others"
    )


def test_a_bind_url_that_is_no_http_url_is_refused():
    assert "is not an http:// or https:// URL with a host" in demo_address_problem("127.0.0.1:8000")
    assert "is not a URL" in demo_address_problem("http://[::1")


@pytest.fixture
def lab_auth(tmp_path, monkeypatch):
    """An installed package 'lab-auth' whose entry point 'lab-sso' is DummyAuthenticator in
    disguise, and a module whose class subclasses it."""
    (tmp_path / "lab_auth.py").write_text(
        "from jupyterhub.auth import DummyAuthenticator, PAMAuthenticator\n"
        "class LabAuthenticator(DummyAuthenticator): pass\n"
        "class LabPam(PAMAuthenticator): pass\n"
    )
    dist = tmp_path / "lab_auth-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-auth\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent("""
        [jupyterhub.authenticators]
        lab-sso = jupyterhub.auth:DummyAuthenticator
        lab-pam = lab_auth:LabPam
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("lab_auth", None)


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("dummy", "jupyterhub.auth.DummyAuthenticator, a DummyAuthenticator"),
        ("NULL", "jupyterhub.auth.NullAuthenticator, a NullAuthenticator"),
        ("lab-sso", "jupyterhub.auth.DummyAuthenticator, a DummyAuthenticator"),
        ("jupyterhub.auth.DummyAuthenticator", "jupyterhub.auth.DummyAuthenticator, a DummyAuthenticator"),
        ("lab_auth.LabAuthenticator", "lab_auth.LabAuthenticator, a DummyAuthenticator"),
    ],
)
def test_production_refuses_an_authenticator_that_lets_anyone_in_by_any_name(lab_auth, name, shown):
    assert production_authenticator_problem(name) == (
        f"production mode needs a real authenticator, and {name!r} is {shown} (anyone may log in): "
        "set LABGPU_AUTHENTICATOR (e.g. github, generic-oauth, ldap) and its settings"
    )


def test_production_takes_a_real_authenticator_by_entry_point_import_string_or_class(lab_auth):
    from jupyterhub.auth import PAMAuthenticator

    for value in ("github", "lab-pam", "lab_auth.LabPam", "oauthenticator.github.GitHubOAuthenticator"):
        assert production_authenticator_problem(value) is None, value
    assert authenticator_class(PAMAuthenticator) is PAMAuthenticator


def test_an_authenticator_that_cannot_be_loaded_is_named_with_what_is_installed(lab_auth):
    problem = production_authenticator_problem("githbu")
    assert problem.startswith(
        "the authenticator 'githbu' is neither an installed JupyterHub authenticator (installed: "
    )
    assert "github" in problem and "lab-sso" in problem
    assert problem.endswith("install it (e.g. pip install oauthenticator) or fix the name")


def handler_for(user):
    return SimpleNamespace(current_user=user)


def hub_user(name, *groups):
    return SimpleNamespace(name=name, groups=[SimpleNamespace(name=g) for g in groups])


def test_jupyterhubs_named_server_limit_is_each_users_named_servers(tmp_path):
    quotas = tmp_path / "quotas.yaml"
    quotas.write_text(
        "defaults: {named_servers: 1}\n"
        "groups: {nlp-lab: {members: [dave], named_servers: 3}, oauth-lab: {named_servers: 2}}\n"
        "users: {eve: {named_servers: 0}}\n"
    )
    store = PolicyStore([str(quotas)])
    limit = named_server_limit(store)
    assert limit(handler_for(hub_user("alice"))) == 1
    assert limit(handler_for(hub_user("dave"))) == 3
    assert limit(handler_for(hub_user("frank", "oauth-lab"))) == 2  # a hub group the policy defines
    assert limit(handler_for(hub_user("eve"))) == 0  # JupyterHub: no limit; the spawner refuses every one
    assert limit(handler_for(None)) == 0
    assert limit(handler_for(SimpleNamespace(name="labgpu-reclaim"))) == 0  # a service


def test_container_starts_wait_for_a_slot_beyond_the_limit(monkeypatch):
    monkeypatch.setattr(hub_limits, "container_starts", ContainerStarts(limit=1))
    order = []

    async def start(name, hold):
        async with start_slot():
            order.append(f"{name} starts")
            await hold.wait()
            order.append(f"{name} started")

    async def main():
        first, second = asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(start("a", first))
        b = asyncio.create_task(start("b", second))
        await asyncio.sleep(0.05)
        assert order == ["a starts"]  # b waits for a's slot
        first.set()
        second.set()
        await asyncio.gather(a, b)

    asyncio.run(main())
    assert order == ["a starts", "a started", "b starts", "b started"]


def test_no_container_start_limit_when_it_is_zero(monkeypatch):
    monkeypatch.setattr(hub_limits, "container_starts", ContainerStarts(limit=0))

    async def main():
        async with start_slot(), start_slot():
            return "both at once"

    assert asyncio.run(main()) == "both at once"
