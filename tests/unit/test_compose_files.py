"""docker-compose.yml, its demo override and .env.example: every knob of jupyterhub_config.py
reaches the hub's container, every ${VARIABLE} is documented, production is the default and the
GPUs go to the poller alone. (`docker-compose config` itself runs in tests/e2e/test_compose.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
# Set by the hub image (paths inside it) or not meant for compose (the image has Debian's proxy;
# the socket is mounted; the entrypoint keeps the cookie secret in the state volume).
SET_BY_THE_IMAGE = {"LABGPU_STATE_DIR", "LABGPU_CONFIG_DIR", "LABGPU_PROXY_COMMAND", "DOCKER_HOST"}
NOT_PASSED = {"JUPYTERHUB_COOKIE_SECRET"}
DEMO_ONLY = {"LABGPU_DEMO_USERS", "LABGPU_DEMO_PASSWORD", "LABGPU_DEMO_GPUS"}


def config_variables() -> set[str]:
    """The variables jupyterhub_config.py's table documents (its first column)."""
    doc = (REPO / "jupyterhub_config.py").read_text().split('"""')[1]
    return set(re.findall(r"^((?:LABGPU|DOCKER|JUPYTERHUB)_[A-Z_]+)\s", doc, re.MULTILINE))


def compose(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def without_comments(name: str) -> str:
    return "\n".join(line for line in (REPO / name).read_text().splitlines() if not line.lstrip().startswith("#"))


def test_every_knob_of_the_hub_reaches_its_container():
    base = compose("docker-compose.yml")["services"]["hub"]["environment"]
    demo = compose("docker-compose.demo.yml")["services"]["hub"]["environment"]
    missing = config_variables() - SET_BY_THE_IMAGE - NOT_PASSED - DEMO_ONLY - set(base)
    assert not missing, f"docker-compose.yml's hub does not pass {sorted(missing)}"
    # LABGPU_DEMO_GPUS is the demo's LABGPU_GPU_SOURCE=simulated:PRESET
    assert DEMO_ONLY - {"LABGPU_DEMO_GPUS"} <= set(demo)
    assert demo["LABGPU_GPU_SOURCE"] == "simulated:${LABGPU_DEMO_GPUS:-2xH100}"


def test_every_compose_variable_is_in_env_example():
    used = set()
    for name in ("docker-compose.yml", "docker-compose.demo.yml"):
        used |= set(re.findall(r"\$\{([A-Z_]+)", without_comments(name)))
    documented = set(re.findall(r"^#? ?([A-Z_]+)=", (REPO / ".env.example").read_text(), re.MULTILINE))
    assert used - documented == set()


def test_production_by_default_and_the_gpus_go_to_the_poller_alone():
    services = compose("docker-compose.yml")["services"]
    assert services["hub"]["environment"]["LABGPU_MODE"] == "${LABGPU_MODE:-production}"
    assert "deploy" not in services["hub"]  # the hub schedules GPUs it never touches
    poller = services["poller"]
    assert poller["pid"] == "host"
    assert poller["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    ]
    assert services["tls"]["profiles"] == ["tls"]


def test_the_demo_leaves_the_gpu_poller_out_and_listens_on_localhost():
    demo = compose("docker-compose.demo.yml")["services"]
    assert demo["poller"] == {"profiles": ["gpu-poller"]}
    assert demo["hub"]["environment"]["LABGPU_MODE"] == "demo"
    assert demo["hub"]["environment"]["LABGPU_BIND_URL"] == "${LABGPU_BIND_URL:-http://127.0.0.1:8000}"


def test_files_use_only_what_compose_1_29_and_v2_both_read():
    for name in ("docker-compose.yml", "docker-compose.demo.yml"):
        text = without_comments(name)
        document = yaml.safe_load(text)
        assert "name" not in document, f"{name}: top-level name: is Compose v2 only"
        assert "!reset" not in text and "!override" not in text, f"{name}: YAML tags of Compose v2.24+"
