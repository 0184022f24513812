"""The workspace image as built here: its labels name the versions inside it, and
labgpu-doctor runs in a real container (the CPU path: no GPU on this machine)."""

from __future__ import annotations

import json

import docker
import pytest

from tests.harness import WORKSPACE_IMAGE

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(real_parts):
    return docker.from_env()


def doctor(client, *args, shm="2g", env=None) -> tuple[int, str]:
    container = client.containers.run(
        WORKSPACE_IMAGE,
        ["labgpu-doctor", *args],
        shm_size=shm,
        network_mode="none",
        environment=env or {},
        detach=True,
    )
    try:
        status = container.wait(timeout=300)["StatusCode"]
        return status, container.logs(stdout=True, stderr=False).decode()
    finally:
        container.remove(force=True)


def test_labels_list_the_versions_inside(client):
    labels = client.images.get(WORKSPACE_IMAGE).labels
    for name in ("torch", "python", "cuda", "cudnn", "nccl", "torchvision", "jupyterlab", "jupyterhub", "labgpu"):
        assert labels.get(f"org.labgpu.version.{name}"), f"no version label for {name}"
    assert labels["org.labgpu.version.jupyterhub"].startswith("6.")
    assert labels["org.labgpu.base-image"]


def test_doctor_cpu_path_passes_and_says_there_is_no_gpu(client):
    status, out = doctor(client, "--json")
    report = json.loads(out)
    checks = {c["name"]: c for c in report["checks"]}
    assert status == 0 and report["ok"] is True
    assert checks["torch"]["status"] == "PASS"
    assert checks["autograd"]["status"] == "PASS" and "dz/dx = 10" in checks["autograd"]["detail"]
    assert checks["cuda"]["status"] == "SKIP" and "no NVIDIA GPU" in checks["cuda"]["detail"]
    assert checks["shm"]["status"] == "PASS"


def test_doctor_flags_dockers_64mb_shm_with_the_fix(client):
    _, out = doctor(client, "--json", shm="64m")
    shm = next(c for c in json.loads(out)["checks"] if c["name"] == "shm")
    assert shm["status"] in ("FAIL", "WARN")
    assert shm["fix"]


def test_doctor_fails_when_assigned_gpus_are_not_visible(client):
    status, out = doctor(client, "--json", env={"LABGPU_GPUS": "GPU-12345678-1234-1234-1234-123456789abc"})
    assert status == 1
    failed = {c["name"] for c in json.loads(out)["checks"] if c["status"] == "FAIL"}
    assert failed & {"devices", "driver", "cuda"}
