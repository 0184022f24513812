"""Image flavours on the real hub. Always: the spawn page lists every image the quota file
offers with the versions inside it (read from the image's labels), and greys out a flavour not
built on this server. When asked (``LABGPU_TEST_FLAVOURS=pytorch-2.7``, a comma-separated list
of images/flavours.tsv rows; not in the default run, as each flavour is a 10-minute build):
the flavour is built with ``scripts/build-images.sh --flavour``, started from the hub, and its
torch version, labgpu-doctor's CPU path and the session record's digest are checked."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import docker
import pytest

from labgpu.db.ledger import Ledger
from labgpu.db.session_store import SessionStore
from labgpu.labels import LABEL_USER
from tests.harness import WORKSPACE_IMAGE, HubProcess

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ASKED = [name for name in os.environ.get("LABGPU_TEST_FLAVOURS", "").split(",") if name.strip()]
FLAVOUR_TAGS = {"pytorch-2.9": "labgpu/workspace:pytorch-2.9", "pytorch-2.7": "labgpu/workspace:pytorch-2.7"}

QUOTAS = f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}", display: "PyTorch (current)"}}
  pytorch-2.9: {{image: "{FLAVOUR_TAGS["pytorch-2.9"]}", display: "PyTorch 2.9"}}
  pytorch-2.7: {{image: "{FLAVOUR_TAGS["pytorch-2.7"]}", display: "PyTorch 2.7"}}
defaults: {{gpus: 0, gpus_total: 0, memory: 2G, cpus: 1, shm: 1G, images: [pytorch, pytorch-2.9, pytorch-2.7]}}
"""


def flavour_row(name: str) -> dict[str, str]:
    columns = ("flavour", "torch", "torchvision", "cuda", "python", "official", "minutes")
    for line in (ROOT / "images" / "flavours.tsv").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == name:
            return dict(zip(columns, fields, strict=True))
    raise AssertionError(f"LABGPU_TEST_FLAVOURS names {name!r}, which images/flavours.tsv does not list")


@pytest.fixture(scope="module")
def built_flavours(real_parts) -> list[str]:
    """Build the flavours LABGPU_TEST_FLAVOURS asks for (cached by hash: instant when built)."""
    for name in ASKED:
        flavour_row(name)
        done = subprocess.run(
            ["bash", "scripts/build-images.sh", "--flavour", name], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0, f"building flavour {name} failed:\n{done.stderr[-3000:]}"
    return ASKED


@pytest.fixture(scope="module")
def flavour_hub(real_parts, built_flavours, request):
    hub = HubProcess(users=["alice"], quotas=QUOTAS)
    try:
        hub.start()
        yield hub
    finally:
        if request.session.testsfailed:
            print(f"\n--- hub log ({hub.hub_id}) ---\n{hub.log_tail(120)}")
        hub.cleanup()


def test_the_spawn_page_lists_each_image_with_its_versions_and_greys_out_an_unbuilt_one(flavour_hub):
    engine = docker.from_env()
    page = flavour_hub.client("alice").session.get(f"{flavour_hub.url}/hub/spawn", timeout=30).text
    options = dict(re.findall(r'<option value="(pytorch[^"]*)"([^>]*)>', page))
    assert set(options) == {"pytorch", "pytorch-2.9", "pytorch-2.7"}
    default_torch = engine.images.get(WORKSPACE_IMAGE).labels["org.labgpu.version.torch"]
    assert f"<li><b>PyTorch (current)</b>: PyTorch {default_torch}, " in page
    for name, tag in FLAVOUR_TAGS.items():
        try:
            labels = engine.images.get(tag).labels
        except docker.errors.ImageNotFound:
            assert "disabled" in options[name], f"{tag} is not built here, but the page offers it"
            assert "not built on this server" in page
        else:
            assert "disabled" not in options[name]
            assert f"PyTorch {labels['org.labgpu.version.torch']}, CUDA {labels['org.labgpu.version.cuda']}" in page


def run_in(container, *command: str) -> tuple[int, str]:
    result = container.exec_run(list(command), user="1000")
    return result.exit_code, result.output.decode(errors="replace")


if ASKED:

    @pytest.mark.parametrize("flavour", ASKED)
    def test_a_flavour_starts_from_the_hub_with_its_own_stack(flavour_hub, flavour):
        row = flavour_row(flavour)
        alice = flavour_hub.client("alice")
        r = alice.start_server(options={"image": flavour})
        assert r.status_code in (201, 202), r.text
        alice.wait_ready(timeout=300)
        (container,) = flavour_hub.containers(**{LABEL_USER: "alice"})
        assert container.attrs["Config"]["Image"] == FLAVOUR_TAGS[flavour]

        status, out = run_in(container, "python3", "-c", "import torch; print(torch.__version__)")
        assert status == 0 and out.strip().startswith(row["torch"]), out
        status, out = run_in(container, "labgpu-doctor", "--json", "--skip-nccl")
        report = json.loads(out)
        assert status == 0 and report["ok"] is True, out
        assert {c["name"]: c["status"] for c in report["checks"]}["torch"] == "PASS"

        alice.stop_server()
        ledger = Ledger(flavour_hub.state_dir / "ledger.sqlite")
        try:
            (run,) = SessionStore(ledger).sessions(user="alice")
        finally:
            ledger.close()
        image = docker.from_env().images.get(FLAVOUR_TAGS[flavour]).attrs
        assert (run.image, run.image_digest) == (FLAVOUR_TAGS[flavour], image["Id"])
        assert run.torch_version is not None and run.torch_version.startswith(row["torch"])
