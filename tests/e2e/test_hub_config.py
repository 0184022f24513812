"""The hub's configuration refuses unsafe setups and turns Docker failures into clear errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.harness import REPO, WORKSPACE_IMAGE, HubProcess, free_port, wait_until

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


def test_every_environment_variable_the_config_reads_is_in_its_table():
    source = (REPO / "jupyterhub_config.py").read_text()
    table, code = source.split('"""', 2)[1], source.split('"""', 2)[2]
    read = set(re.findall(r"""["']((?:LABGPU|JUPYTERHUB|DOCKER)_[A-Z_]+)["']""", code))
    documented = set(re.findall(r"^((?:LABGPU|JUPYTERHUB|DOCKER)_[A-Z_]+)\s", table, re.MULTILINE))
    assert read - documented == set(), "read by jupyterhub_config.py but missing from its table"
    assert {"LABGPU_DB_URL", "LABGPU_PROXY_COMMAND", "LABGPU_CONFIG_DIR", "LABGPU_LEDGER"} <= documented


def test_a_file_in_the_admins_config_dir_adds_a_service(real_parts, tmp_path):
    config_dir, site = tmp_path / "jupyterhub_config.d", tmp_path / "site"
    config_dir.mkdir()
    (site / "services" / "lab-notes").mkdir(parents=True)
    (site / "services" / "lab-notes" / "index.html").write_text("<h1>Lab notes</h1>")
    port = free_port()
    (config_dir / "10-lab-notes.py").write_text(
        "import sys\n"
        "c.JupyterHub.services.append({\n"
        "    'name': 'lab-notes',\n"
        f"    'url': 'http://127.0.0.1:{port}',\n"
        f"    'command': [sys.executable, '-m', 'http.server', '--bind', '127.0.0.1', '{port}'],\n"
        f"    'cwd': '{site}',\n"
        "})\n"
    )
    hub = HubProcess(users=["alice"], extra_env={"LABGPU_CONFIG_DIR": str(config_dir)})
    try:
        hub.start()
        services = hub.client("alice").api("GET", "/services").json()  # alice is the demo admin
        assert "lab-notes" in services
        page = wait_until(
            lambda: (r := requests.get(f"{hub.url}/services/lab-notes/", timeout=5)).ok and r.text,
            timeout=30,
            what="the lab-notes service to answer through the proxy",
        )
        assert page == "<h1>Lab notes</h1>"
        assert f"loaded the admin's settings from {config_dir / '10-lab-notes.py'}" in hub.log_tail(200)
    finally:
        hub.cleanup()


def test_a_broken_file_in_the_admins_config_dir_stops_the_hub_naming_it(real_parts, tmp_path):
    config_dir = tmp_path / "conf.d"
    config_dir.mkdir()
    (config_dir / "20-typo.py").write_text("c.JupyterHub.services.append({'name': 'x'})\nc.Spawner.nope = undefined\n")
    done = run_hub_expecting_refusal({"LABGPU_CONFIG_DIR": str(config_dir)}, tmp_path)
    assert done.returncode == 1
    assert f"LabGPU Hub will not start: {config_dir / '20-typo.py'}:2: NameError" in done.stderr


def test_workspace_settings_outside_the_allowlist_stop_the_hub_with_every_reason(real_parts, tmp_path):
    # Issue 12 item 9: a hub that would refuse every spawn does not start.
    config_dir = tmp_path / "conf.d"
    config_dir.mkdir()
    (config_dir / "30-workspaces.py").write_text(
        "c.DockerSpawner.extra_host_config = {'network_mode': 'host', 'security_opt': ['label=disable']}\n"
        "c.GPUDockerSpawner.volumes = {'//var/run/docker.sock': '/var/run/docker.sock'}\n"
        "c.GPUDockerSpawner.extra_create_kwargs = {'user': '00'}\n"
    )
    done = run_hub_expecting_refusal({"LABGPU_CONFIG_DIR": str(config_dir)}, tmp_path)
    assert done.returncode == 1
    assert "LabGPU Hub will not start: the workspace settings add what a workspace may not get" in done.stderr
    for reason in (
        "extra_create_kwargs.user '00' is root (uid 0); workspaces run as a non-root user",
        "extra_host_config.network_mode is not allowed",
        "'label=disable' is not allowed",
        "volumes: '//var/run/docker.sock' is in /var/run, which gives a workspace control of the host",
    ):
        assert reason in done.stderr


def test_demo_mode_refuses_an_address_that_only_starts_like_localhost(real_parts, tmp_path):
    done = run_hub_expecting_refusal({"LABGPU_BIND_URL": "http://127.0.0.1.evil.com:8000"}, tmp_path)
    assert done.returncode == 1
    assert (
        "LabGPU Hub will not start: demo mode has a shared password and listens on localhost only, but "
        "LABGPU_BIND_URL='http://127.0.0.1.evil.com:8000' has the host '127.0.0.1.evil.com'"
    ) in done.stderr


def installed_dummy_under_another_name(site: Path) -> None:
    """Install (on PYTHONPATH) a package whose authenticator entry point 'lab-sso' is
    JupyterHub's DummyAuthenticator: any user name with one shared password."""
    dist = site / "lab_sso-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-sso\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[jupyterhub.authenticators]\nlab-sso = jupyterhub.auth:DummyAuthenticator\n"
    )


@pytest.mark.parametrize("authenticator", ["lab-sso", "jupyterhub.auth.DummyAuthenticator"])
def test_production_refuses_a_dummy_authenticator_under_another_name(real_parts, tmp_path, authenticator):
    installed_dummy_under_another_name(tmp_path / "site")
    done = run_hub_expecting_refusal(
        {
            "LABGPU_MODE": "production",
            "LABGPU_AUTHENTICATOR": authenticator,
            "JUPYTERHUB_COOKIE_SECRET": "ab" * 32,
            "PYTHONPATH": str(tmp_path / "site"),
        },
        tmp_path,
    )
    assert done.returncode == 1
    assert (
        f"LabGPU Hub will not start: production mode needs a real authenticator, and {authenticator!r} is "
        "jupyterhub.auth.DummyAuthenticator, a DummyAuthenticator (anyone may log in)"
    ) in done.stderr


def test_production_refuses_a_dummy_authenticator_set_in_the_admins_config_dir(real_parts, tmp_path):
    config_dir = tmp_path / "conf.d"
    config_dir.mkdir()
    (config_dir / "10-auth.py").write_text("c.JupyterHub.authenticator_class = 'dummy'\n")
    done = run_hub_expecting_refusal(
        {
            "LABGPU_MODE": "production",
            "LABGPU_AUTHENTICATOR": "github",
            "JUPYTERHUB_COOKIE_SECRET": "ab" * 32,
            "LABGPU_CONFIG_DIR": str(config_dir),
        },
        tmp_path,
    )
    assert done.returncode == 1
    assert (
        "production mode needs a real authenticator, and 'dummy' is jupyterhub.auth.DummyAuthenticator" in done.stderr
    )


def test_spawns_waiting_for_gpus_do_not_count_toward_the_concurrent_spawn_limit(real_parts, tmp_path):
    # The admin keeps JupyterHub's knob; a queued GPU spawn must not make a CPU spawn wait or fail.
    config_dir = tmp_path / "conf.d"
    config_dir.mkdir()
    (config_dir / "10-throttle.py").write_text("c.JupyterHub.concurrent_spawn_limit = 1\n")
    hub = HubProcess(
        users=["alice", "bob", "carol"],
        quotas=f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}"}}
defaults: {{gpus: 1, gpus_total: 1, memory: 2G, cpus: 1, shm: 1G, images: [pytorch]}}
fairshare: {{allow_queue: true}}
""",
        extra_env={"LABGPU_DEMO_GPUS": "1xH100", "LABGPU_CONFIG_DIR": str(config_dir), "LABGPU_RECLAIM": "off"},
    )
    try:
        hub.start()
        alice, bob, carol = (hub.client(u) for u in ("alice", "bob", "carol"))
        assert alice.start_server(options={"gpus": 1}).status_code in (201, 202)
        alice.wait_ready()
        assert bob.start_server(options={"gpus": 1}).status_code == 202  # waits in the GPU queue
        assert bob.server_model()["pending"] == "spawn"
        r = carol.start_server(options={"gpus": 0})
        assert r.status_code in (201, 202), r.text
        carol.wait_ready(timeout=60)
        assert bob.server_model()["pending"] == "spawn"  # still waiting for alice's GPU
    finally:
        hub.cleanup()


def test_jupyterhubs_named_server_limit_is_the_policys(real_parts):
    hub = HubProcess(
        users=["alice"],
        quotas=f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}"}}
defaults: {{memory: 2G, cpus: 1, shm: 1G, images: [pytorch], named_servers: 1}}
""",
    )
    try:
        hub.start()
        alice = hub.client("alice")
        assert alice.start_server("one").status_code in (201, 202)
        alice.wait_ready("one")
        alice.stop_server("one")  # stopped, but it is still one of alice's named servers
        r = alice.start_server("two")
        assert r.status_code == 400
        assert "User alice already has the maximum of 1 named servers" in r.json()["message"]
        assert hub.containers() == []
        assert alice.start_server("one").status_code in (201, 202)  # her existing one starts again
        alice.wait_ready("one")
    finally:
        hub.cleanup()
