"""A real Prometheus scraping a real hub (simulated GPUs, one GPU server held): the metrics
endpoint's token scope, the exposition promtool accepts, the alert rules loaded by the server,
and every query of the Grafana dashboard answered with data through Prometheus' query API.

Prometheus is Debian's (scripts/need-prometheus.sh), on a free port with its own storage in a
temporary directory and a 1 s scrape interval; CI=true fails without it.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from tests.conftest import require
from tests.harness import WORKSPACE_IMAGE, HubProcess, free_port, wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "labgpu-dashboard.json"
ALERTS = REPO / "deploy" / "prometheus" / "labgpu-alerts.yml"
QUOTAS = f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}", display: "PyTorch workspace"}}
defaults: {{gpus: 1, gpus_total: 1, memory: 2G, cpus: 1, shm: 1G, images: [pytorch]}}
groups:
  vision: {{members: [alice], pool: 2}}
"""
# Grafana's variables, as Grafana would fill them for a dashboard showing the last hour.
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$__range": "1h", "$__interval": "1s"}


@pytest.fixture(scope="module")
def prometheus_binary():
    path = shutil.which("prometheus")
    require(path is not None and shutil.which("promtool") is not None, "Prometheus", "run scripts/need-prometheus.sh")
    return path


@pytest.fixture(scope="module")
def hub(real_parts, prometheus_binary):
    """A hub on 2 simulated H100s with a Prometheus token; alice holds one GPU, bob was refused."""
    token = secrets.token_hex(32)
    h = HubProcess(
        users=["alice", "bob"],
        quotas=QUOTAS,
        extra_env={"LABGPU_DEMO_GPUS": "2xH100", "LABGPU_PROMETHEUS_TOKEN": token, "LABGPU_POLLER_INTERVAL": "1"},
    )
    h.prometheus_token = token  # type: ignore[attr-defined]
    try:
        h.start()
        alice = h.client("alice")
        assert alice.start_server(options={"gpus": 1}).status_code in (201, 202)
        alice.wait_ready()
        # Bob asks for more than his quota: refused at once, and counted.
        refused = h.client("bob").start_server(options={"gpus": 2})
        assert refused.status_code == 400, refused.text
        h.alice = alice  # type: ignore[attr-defined]
        yield h
    finally:
        h.cleanup()


@pytest.fixture(scope="module")
def prometheus(hub, prometheus_binary, tmp_path_factory):
    """A real Prometheus scraping the hub's /hub/metrics and /services/labgpu/metrics every second."""
    home = tmp_path_factory.mktemp("prometheus")
    (home / "token").write_text(hub.prometheus_token)
    shutil.copy(ALERTS, home / "labgpu-alerts.yml")
    target = hub.url.removeprefix("http://")
    jobs = [("jupyterhub", "/hub/metrics"), ("labgpu", "/services/labgpu/metrics")]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["labgpu-alerts.yml"],
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": path,
                "authorization": {"type": "Bearer", "credentials_file": str(home / "token")},
                "static_configs": [{"targets": [target]}],
            }
            for job, path in jobs
        ],
    }
    (home / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log = open(home / "prometheus.log", "wb")  # noqa: SIM115  # closed below
    proc = subprocess.Popen(
        [
            prometheus_binary,
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _get(f"{url}/-/ready").status_code == 200, 30, "Prometheus to be ready")

        def targets_up():
            active = _get(f"{url}/api/v1/targets").json()["data"]["activeTargets"]
            return {t["labels"]["job"] for t in active if t["health"] == "up"} == {"jupyterhub", "labgpu"} or None

        try:
            wait_until(targets_up, 30, "both targets to be up")
        except TimeoutError:
            raise AssertionError(_get(f"{url}/api/v1/targets").text) from None
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
        if proc.returncode not in (0, -15):
            print((home / "prometheus.log").read_text()[-3000:])


def _get(url: str, **kwargs) -> requests.Response:
    try:
        return requests.get(url, timeout=10, **kwargs)
    except requests.ConnectionError:
        return requests.Response()  # status_code None: not up yet


def metrics(hub, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{hub.url}/services/labgpu/metrics", headers=headers, timeout=30)


def test_the_metrics_need_a_token_with_the_metrics_scope(hub):
    assert metrics(hub, None).status_code == 401
    assert metrics(hub, "not-a-token").status_code == 403
    refused = metrics(hub, hub.alice.token)  # a user's own token: no metrics scope
    assert refused.status_code == 403
    assert "custom:labgpu:metrics" in refused.text
    ok = metrics(hub, hub.prometheus_token)
    assert ok.status_code == 200
    assert ok.headers["Content-Type"].startswith("text/plain")


def test_promtool_accepts_what_the_hub_serves(hub):
    text = metrics(hub, hub.prometheus_token).text
    lint = subprocess.run(
        ["promtool", "check", "metrics"],
        input=text.replace("modelName=", "model_name="),
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    # The held GPU carries dcgm-exporter's names with alice as its holder, charged to her group.
    assert 'labgpu_gpu_allocated{Hostname="' in text
    assert 'labgpu_group="vision",labgpu_server="",labgpu_user="alice"' in text
    assert 'labgpu_spawn_refusals_total{reason="quota"} 1.0' in text


def query(prometheus: str, expr: str) -> list[dict]:
    r = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=30)
    assert r.status_code == 200, f"{expr}: {r.text}"
    body = r.json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def test_every_dashboard_panel_gets_data_from_prometheus(hub, prometheus):
    # rate() and increase() need two samples of each series in their window.
    wait_until(lambda: query(prometheus, "count_over_time(labgpu_gpus[1m]) >= 3") or None, 30, "three scrapes")
    wait_until(
        lambda: query(prometheus, 'DCGM_FI_DEV_GPU_UTIL{labgpu_user="alice"}') or None, 30, "alice's GPU telemetry"
    )
    panels = json.loads(DASHBOARD.read_text())["panels"]
    empty = []
    for panel in panels:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            if not query(prometheus, expr):
                empty.append(f"{panel['title']}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    held = query(prometheus, 'labgpu_gpu_allocated{labgpu_user="alice"} == 1')
    assert [r["metric"]["labgpu_group"] for r in held] == ["vision"]


def test_the_alert_rules_load_in_the_server_and_none_fires_on_a_healthy_hub(prometheus):
    rules = requests.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    names = {r["name"] for group in rules for r in group["rules"]}
    assert names == {
        "LabGPUGpuUnhealthy",
        "LabGPUPollerStale",
        "LabGPUQueueWaitOverAnHour",
        "LabGPUGpuHeldIdle",
        "LabGPULedgerDrift",
    }
    assert all(r["health"] == "ok" for group in rules for r in group["rules"]), rules
    firing = requests.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    assert [a["labels"]["alertname"] for a in firing if a["state"] == "firing"] == []
