"""/services/labgpu/metrics in the web service: who may read it (401 without a token, 403 for a
token the hub does not know or one without custom:labgpu:metrics) and what a reader gets, with
the hub's token check replaced by a stub that answers as the Hub API would."""

from __future__ import annotations

from typing import Any

import pytest
from tornado.testing import AsyncHTTPTestCase

from labgpu.db.ledger import Ledger
from labgpu.gpus.inventory import Gpu
from labgpu.metrics import web as metrics_web
from labgpu.web.app import make_app
from labgpu.web.base import WebContext

TOKENS = {
    "prometheus-token": {"kind": "service", "name": "prometheus", "scopes": ["read:metrics", "custom:labgpu:metrics"]},
    "alice-token": {"kind": "user", "name": "alice", "scopes": ["access:services!service=labgpu", "self"]},
}


class StubHubAuth:
    """Answers like HubOAuth: the token from the Authorization header, its owner's model."""

    def get_token(self, handler: Any, in_cookie: bool = True) -> str | None:
        header = handler.request.headers.get("Authorization", "")
        return header.split(None, 1)[1] if " " in header else None

    async def user_for_token(self, token: str, sync: bool = True) -> dict | None:
        return TOKENS.get(token)

    def check_scopes(self, required: set[str], model: dict) -> set[str]:
        return required & set(model["scopes"])


@pytest.fixture
def ledger_path(tmp_path, monkeypatch):
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        ledger.sync_inventory([Gpu("GPU-a", 0, "NVIDIA H100", 80 * 2**30)])
        ledger.allocate("alice", "", 1)
    monkeypatch.setattr(metrics_web.HubOAuth, "instance", classmethod(lambda cls: StubHubAuth()))
    return path


@pytest.fixture
def app_test(ledger_path):
    context = WebContext(ledger_url=str(ledger_path))

    class Case(AsyncHTTPTestCase):
        def get_app(self):
            return make_app(context, modules=("labgpu.metrics.web",), cookie_secret=b"x" * 32)

        def runTest(self):  # unittest calls it
            pass

    case = Case()
    case.setUp()
    yield case, context
    collector = context.extra.get("metrics")
    if collector is not None:
        collector.close()
    case.tearDown()


def get(case: Any, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return case.fetch("/services/labgpu/metrics", headers=headers)


def test_without_a_token_the_answer_is_401_and_says_which_scope(app_test):
    case, _ = app_test
    r = get(case)
    assert r.code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert b"custom:labgpu:metrics" in r.body


def test_a_token_the_hub_does_not_know_or_without_the_scope_gets_403(app_test):
    case, _ = app_test
    assert get(case, "forged").code == 403
    r = get(case, "alice-token")  # a user's own token: her servers, not everyone's usage
    assert r.code == 403
    assert b"lacks the custom:labgpu:metrics scope" in r.body


def test_prometheus_token_reads_the_metrics(app_test):
    case, _ = app_test
    r = get(case, "prometheus-token")
    assert r.code == 200
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b'labgpu_gpus{state="allocated"} 1.0' in r.body
    assert b'labgpu_user="alice"' in r.body


def test_a_database_that_cannot_be_read_is_a_503_not_a_crash(app_test, ledger_path):
    case, context = app_test
    assert get(case, "prometheus-token").code == 200

    def broken() -> None:
        raise RuntimeError("database is locked")

    context.extra["metrics"].snapshot = broken
    r = get(case, "prometheus-token")
    assert r.code == 503
    assert b"Could not read the ledger's database: RuntimeError: database is locked" in r.body
