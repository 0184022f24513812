"""The hub's configuration refuses unsafe setups and turns Docker failures into clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.harness import REPO, HubProcess

pytestmark = pytest.mark.e2e


def run_hub_expecting_refusal(env_overrides: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    hub = HubProcess(extra_env=env_overrides)
    env = hub.env()
    try:
        return subprocess.run(
            [str(Path(sys.executable).with_name("jupyterhub")), "-f", str(REPO / "jupyterhub_config.py")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        hub.cleanup()


def test_production_without_real_auth_refuses_to_start(real_parts, tmp_path):
    done = run_hub_expecting_refusal({"LABGPU_MODE": "production"}, tmp_path)
    assert done.returncode == 1
    assert "LabGPU Hub will not start: production mode needs a real authenticator" in done.stderr


def test_production_without_cookie_secret_refuses_to_start(real_parts, tmp_path):
    done = run_hub_expecting_refusal({"LABGPU_MODE": "production", "LABGPU_AUTHENTICATOR": "github"}, tmp_path)
    assert done.returncode == 1
    assert "needs a cookie secret" in done.stderr


def test_demo_mode_refuses_a_public_address(real_parts, tmp_path):
    done = run_hub_expecting_refusal({"LABGPU_BIND_URL": "http://0.0.0.0:18000"}, tmp_path)
    assert done.returncode == 1
    assert "demo mode has a shared password and listens on localhost only" in done.stderr


def test_missing_image_is_a_clear_error_and_the_hub_stays_up(real_parts, tmp_path):
    quotas = tmp_path / "quotas.yaml"
    quotas.write_text("images:\n  pytorch: {image: 'labgpu/workspace:no-such-tag'}\ndefaults: {images: [pytorch]}\n")
    hub = HubProcess(users=["alice"], extra_env={"LABGPU_QUOTAS": str(quotas)})
    try:
        hub.start()
        alice = hub.client("alice")
        r = alice.start_server()
        assert r.status_code == 500
        assert "labgpu/workspace:no-such-tag' is not on this server" in r.json()["message"]
        assert "Traceback" not in hub.log_tail(200)
        assert requests.get(f"{hub.url}/hub/health", timeout=5).status_code == 200
        assert hub.containers() == []
    finally:
        hub.cleanup()


def test_production_mode_with_real_auth_starts_and_offers_only_that_login(real_parts):
    hub = HubProcess(
        users=["alice"],
        extra_env={
            "LABGPU_MODE": "production",
            "LABGPU_AUTHENTICATOR": "github",
            "LABGPU_ALLOWED_USERS": "alice",
            "JUPYTERHUB_COOKIE_SECRET": "ab" * 32,
            "OAUTH_CLIENT_ID": "test-client",
            "OAUTH_CLIENT_SECRET": "test-secret",
            "OAUTH_CALLBACK_URL": "http://127.0.0.1/hub/oauth_callback",
        },
    )
    try:
        hub.start()
        page = requests.get(f"{hub.url}/hub/login", timeout=10).text
        assert "Sign in with GitHub" in page
        assert 'name="password"' not in page  # no demo password form
        # The login button goes to GitHub with our client id (not followed: no network here).
        r = requests.get(f"{hub.url}/hub/oauth_login", allow_redirects=False, timeout=10)
        assert r.status_code == 302 and r.headers["Location"].startswith("https://github.com/login/oauth/authorize")
        assert "client_id=test-client" in r.headers["Location"]
    finally:
        hub.cleanup()
