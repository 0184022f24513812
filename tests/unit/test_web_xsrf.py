"""The web service's XSRF rule: a script's token in the Authorization header exempts a POST from
the XSRF check only when the hub accepts that token. A bogus token sent with the session cookie
(e.g. by a page on the hub's origin: a colleague's shared server) must not turn the check off
for the cookie (JupyterHub falls back to the cookie when a token is refused). And no other page
may frame ours."""

from __future__ import annotations

import sys
import types

import pytest
from jupyterhub.services.auth import HubOAuth
from tornado import web
from tornado.testing import AsyncHTTPTestCase

from labgpu.web.app import make_app
from labgpu.web.base import WebContext
from labgpu.web.sharing import ScriptOrPageHandler


class Echo(ScriptOrPageHandler):
    @web.authenticated
    async def post(self) -> None:
        self.write_json({"user": self.current_user["name"], "token": getattr(self, "_token_authenticated", False)})


async def user_for_token(self, token, session_id="", sync=True):
    users = {"cookie-token": "victim", "script-token": "alice"}
    return {"name": users[token], "kind": "user", "groups": [], "scopes": []} if token in users else None


@pytest.fixture
def fetch(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "service-token")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/services/labgpu/")
    monkeypatch.setenv("JUPYTERHUB_CLIENT_ID", "service-labgpu")
    monkeypatch.setattr(HubOAuth, "user_for_token", user_for_token)
    monkeypatch.setattr(HubOAuth, "_get_token_cookie", lambda self, handler: "cookie-token")  # logged in
    module = types.ModuleType("xsrf_test_routes")
    module.routes = lambda: [(r"api/echo", Echo)]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "xsrf_test_routes", module)

    class Case(AsyncHTTPTestCase):
        def get_app(self):
            return make_app(
                WebContext(ledger_url="sqlite:///:memory:"), modules=("xsrf_test_routes",), cookie_secret=b"x" * 32
            )

        def runTest(self):
            pass

    case = Case()
    case.setUp()
    headers = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin"}
    yield lambda **extra: case.fetch(
        "/services/labgpu/api/echo", method="POST", body="{}", headers={**headers, **extra}, follow_redirects=False
    )
    case.tearDown()


def test_a_cookie_without_the_xsrf_token_is_not_enough(fetch):
    assert fetch().code in (302, 403)


def test_a_bogus_token_does_not_switch_the_check_off_for_the_cookie(fetch):
    answer = fetch(Authorization="token bogus")
    assert answer.code in (302, 403), answer.body[:300]
    assert b"victim" not in answer.body


def test_a_token_the_hub_accepts_needs_no_xsrf_token(fetch):
    answer = fetch(Authorization="token script-token")
    assert answer.code == 200, answer.body[:300]
    assert b'"user": "alice"' in answer.body and b'"token": true' in answer.body


def test_no_page_of_ours_can_be_framed(fetch):
    answer = fetch(Authorization="token script-token")
    assert answer.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
    assert answer.headers["X-Frame-Options"] == "DENY"


class WhoAmI(ScriptOrPageHandler):
    @web.authenticated
    async def get(self) -> None:
        self.write_json({"admin": self.viewer.admin})


def test_a_narrow_admin_token_does_not_act_as_admin(monkeypatch):
    async def admin_tokens(self, token, session_id="", sync=True):
        scopes = {"narrow": ["access:services!service=labgpu"], "full": ["admin:users", "access:servers"]}
        return {"name": "root", "kind": "user", "admin": True, "groups": [], "scopes": scopes[token]}

    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "service-token")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/services/labgpu/")
    monkeypatch.setattr(HubOAuth, "user_for_token", admin_tokens)
    module = types.ModuleType("whoami_test_routes")
    module.routes = lambda: [(r"api/whoami", WhoAmI)]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "whoami_test_routes", module)

    class Case(AsyncHTTPTestCase):
        def get_app(self):
            context = WebContext(ledger_url="sqlite:///:memory:")
            return make_app(context, modules=("whoami_test_routes",), cookie_secret=b"x" * 32)

        def runTest(self):
            pass

    case = Case()
    case.setUp()
    try:
        ask = lambda token: case.fetch("/services/labgpu/api/whoami", headers={"Authorization": f"token {token}"})  # noqa: E731
        assert ask("narrow").body == b'{"admin": false}'
        assert ask("full").body == b'{"admin": true}'
    finally:
        case.tearDown()
