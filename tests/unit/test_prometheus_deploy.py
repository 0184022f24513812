"""deploy/prometheus and deploy/grafana, checked by the real promtool (Debian's prometheus
package: scripts/need-prometheus.sh): our exposition lints clean, the rules load, every alert
fires in promtool's unit tests, the scrape config is valid, and the dashboard queries only
series LabGPU or JupyterHub export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from labgpu.metrics.series import HOLDER_LABELS, GpuSample, GpuState, Histogram, Snapshot, build_families
from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "labgpu-dashboard.json"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    require(path is not None, "promtool", "run scripts/need-prometheus.sh (apt-get install prometheus)")
    return str(path)


def full_snapshot() -> Snapshot:
    """A snapshot with every series present."""
    sample = GpuSample(87, 40, 1024, 81559, 61, 412.5, 0)
    return Snapshot(
        hostname="gpu1",
        now=1000.0,
        gpus=[
            GpuState(0, "GPU-a", "NVIDIA H100", "0000:01:00.0", "alice", "", "vision", True, sample),
            GpuState(1, "GPU-b", "NVIDIA H100", "0000:02:00.0", healthy=False),
        ],
        queue_waiting=[("vision", 2, 400.0)],
        queue_wait=Histogram((("60", 1.0), ("+Inf", 2.0)), 700.0),
        queue_exits={"granted": 2},
        allocation_events={"grant": 3, "release": 2},
        refusals={"quota": 1, "capacity": 4},
        reclaim_warnings={"idle": 2},
        reclaims={"idle": 1},
        held_seconds={("alice", "vision"): 7200.0},
        busy_seconds={("alice", "vision"): 3600.0},
        fairshare={("alice", "vision"): 0.3},
        last_sample=995.0,
        drift={"adopted": 1},
        last_reconcile=900.0,
        last_drift={"adopted": 1},
        previous_scrape_seconds=0.004,
    )


def exposition() -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    class Fixed:
        def collect(self):
            return [f.to_metric() for f in build_families(full_snapshot())]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def run(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_finds_nothing_wrong_with_our_exposition_but_dcgm_exporters_own_label_name(promtool):
    text = exposition()
    result = run(promtool, "check", "metrics", stdin=text)
    # dcgm-exporter's label modelName is camelCase: promtool lints it there as here; we keep it
    # so that dashboards made for dcgm-exporter work. Nothing else.
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert problems, "expected promtool's lint of dcgm-exporter's modelName label"
    assert all(line.endswith("label names should be written in 'snake_case' not 'camelCase'") for line in problems)
    clean = run(promtool, "check", "metrics", stdin=text.replace("modelName=", "model_name="))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert (clean.stdout + clean.stderr).strip() == ""


def test_the_alert_rules_load(promtool):
    result = run(promtool, "check", "rules", str(PROMETHEUS / "labgpu-alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def test_every_alert_fires_in_promtools_unit_tests(promtool):
    result = run(promtool, "test", "rules", "labgpu-alerts.test.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load((PROMETHEUS / "labgpu-alerts.yml").read_text())
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"]}
    tests = yaml.safe_load((PROMETHEUS / "labgpu-alerts.test.yml").read_text())["tests"]
    fired = {t["alertname"] for test in tests for t in test["alert_rule_test"] if t["exp_alerts"]}
    assert (
        alerts
        == fired
        == {
            "LabGPUGpuUnhealthy",
            "LabGPUPollerStale",
            "LabGPUQueueWaitOverAnHour",
            "LabGPUGpuHeldIdle",
            "LabGPULedgerDrift",
        }
    )


def test_the_scrape_config_is_valid(promtool, tmp_path):
    token = tmp_path / "labgpu-token"
    token.write_text("0123456789abcdef\n")
    config = (PROMETHEUS / "prometheus.yml").read_text().replace("/etc/prometheus/labgpu-token", str(token))
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(PROMETHEUS / "labgpu-alerts.yml", tmp_path)
    result = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {job["job_name"]: job for job in yaml.safe_load(config)["scrape_configs"]}
    assert jobs["jupyterhub"]["metrics_path"] == "/hub/metrics"
    assert jobs["labgpu"]["metrics_path"] == "/services/labgpu/metrics"


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def exported_series() -> set[str]:
    """Every series name LabGPU exports (with a counter's _total, a histogram's parts) and every
    one JupyterHub's prometheus_client registry has."""
    from jupyterhub import metrics  # noqa: F401  (registers JupyterHub's metrics)
    from prometheus_client import REGISTRY

    names = {s.name for family in build_families(full_snapshot()) for s in family.to_metric().samples}
    names |= {s.name for family in REGISTRY.collect() for s in family.samples}
    return names


def test_the_dashboard_queries_only_series_labgpu_or_jupyterhub_export():
    known = exported_series()
    queries = dashboard_queries()
    assert len(queries) >= 20
    for expr in queries:
        used = set(re.findall(r"\b((?:DCGM_FI|labgpu|jupyterhub)_[A-Za-z0-9_]+)", expr)) - set(HOLDER_LABELS)
        assert used, expr
        assert used <= known, f"{expr}: {sorted(used - known)} not exported"


def test_our_text_of_every_series_is_prometheus_clients():
    from labgpu.metrics.series import exposition_text

    assert exposition_text(build_families(full_snapshot())).decode() == exposition()
