"""The image flavours: images/flavours.tsv is well formed and names the stacks the lab keeps,
and scripts/build-images.sh turns each row into the build it says (``--plan`` prints the
builds with their arguments and builds nothing, so this runs without Docker)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from labgpu.labels import image_versions_text, version_label
from labgpu.quota import load_policy, load_policy_text, resolve
from labgpu.quota.spawn_options import options_form

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "images" / "flavours.tsv"
SCRIPT = ROOT / "scripts" / "build-images.sh"
COLUMNS = ("flavour", "torch", "torchvision", "cuda", "python", "official", "minutes")
# torchvision is released in lockstep with torch: these pairs are the ones PyTorch publishes.
TORCHVISION_OF = {"2.7": "0.22", "2.9": "0.24", "2.14": "0.29"}


def rows() -> list[dict[str, str]]:
    found = []
    for line in TABLE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        assert len(fields) == len(COLUMNS), f"{line!r} has {len(fields)} columns, not {len(COLUMNS)}"
        found.append(dict(zip(COLUMNS, fields, strict=True)))
    return found


def tag_of(flavour: str) -> str:
    return "labgpu/workspace:local" if flavour == "default" else f"labgpu/workspace:{flavour}"


def plan(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--plan", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "BASE_IMAGE": "", **env},
        timeout=60,
    )


def planned(stdout: str) -> list[dict[str, str]]:
    return [dict(field.split("=", 1) for field in line.split()) for line in stdout.splitlines()]


def test_the_table_names_the_default_and_the_two_pinned_stacks():
    table = {row["flavour"]: row for row in rows()}
    assert list(table) == ["default", "pytorch-2.9", "pytorch-2.7"]
    assert table["pytorch-2.9"]["torch"].startswith("2.9.") and table["pytorch-2.9"]["cuda"] == "12.8"
    assert table["pytorch-2.7"]["torch"].startswith("2.7.") and table["pytorch-2.7"]["cuda"] == "12.6"
    for row in table.values():
        assert re.fullmatch(r"\d+\.\d+\.\d+", row["torch"]), row
        major_minor = row["torch"].rsplit(".", 1)[0]
        assert row["torchvision"].startswith(TORCHVISION_OF[major_minor] + "."), row
        assert re.fullmatch(r"3\.\d+", row["python"]), row
        assert row["minutes"].isdigit()
        if row["flavour"] != "default":
            # The production build starts from the official image of the same stack.
            assert row["official"] == f"pytorch/pytorch:{row['torch']}-cuda{row['cuda']}-cudnn9-runtime"


def test_plan_builds_each_flavour_on_its_own_torch_base_over_one_shared_rootfs():
    done = plan("--all")
    assert done.returncode == 0, done.stderr
    builds = planned(done.stdout)
    assert [b["flavour"] for b in builds] == [r["flavour"] for r in rows()]
    for build, row in zip(builds, rows(), strict=True):
        assert (build["torch"], build["torchvision"], build["cuda"]) == (row["torch"], row["torchvision"], row["cuda"])
        assert build["base"].startswith("labgpu/torch-base:")
        assert build["name"] == tag_of(row["flavour"])
    assert len({b["base"] for b in builds}) == len(builds)  # one torch layer per stack
    assert len({b["workspace"] for b in builds}) == len(builds)
    # Without a flag only the default flavour is built (what the README's commands and CI do).
    assert planned(plan().stdout) == builds[:1]


def test_plan_of_the_official_build_names_each_flavours_official_base():
    done = plan("--official", "--flavour", "pytorch-2.7", "--flavour", "pytorch-2.9")
    assert done.returncode == 0, done.stderr
    assert [b["base"] for b in planned(done.stdout)] == [
        "pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime",
        "pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime",
    ]
    done = plan("--flavour", "pytorch-2.7", BASE_IMAGE="registry.example.org/lab/torch:2.7")
    assert planned(done.stdout)[0]["base"] == "registry.example.org/lab/torch:2.7"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--flavour", "pytorch-1.0"), {}, "no flavour 'pytorch-1.0' in images/flavours.tsv (flavours: default"),
        (("--official",), {}, "flavour 'default' names no official base"),
        (("--all",), {"BASE_IMAGE": "x:1"}, "BASE_IMAGE names one base"),
        (("--flavor", "x"), {}, "unknown argument '--flavor'"),
    ],
)
def test_plan_refuses_what_it_cannot_build_and_says_why(args, env, message):
    done = plan(*args, **env)
    assert done.returncode != 0 and done.stdout == ""
    assert message in done.stderr


def test_a_malformed_row_is_named(tmp_path):
    table = tmp_path / "flavours.tsv"
    table.write_text("# flavour torch ...\ndefault 2.14.1 0.29.2 - 3.11 -\n")
    done = plan(LABGPU_FLAVOURS_FILE=str(table))
    assert done.returncode != 0
    assert "the row of 'default' has 6 columns, not 7" in done.stderr


def test_the_example_quota_file_offers_every_flavour_by_its_tag():
    policy = load_policy([ROOT / "quotas" / "quotas.yaml"])
    offered = {spec.image for spec in policy.spec.images.values()}
    for row in rows():
        tag = tag_of(row["flavour"])
        assert tag in offered, f"quotas/quotas.yaml does not offer the {row['flavour']} flavour ({tag})"


# --- the spawn page: each image with the versions inside it, an unbuilt one greyed out -----------

FLAVOUR_POLICY = textwrap.dedent(
    """
    images:
      pytorch: {image: "labgpu/workspace:local", display: "PyTorch (current)"}
      pytorch-2.9: {image: "labgpu/workspace:pytorch-2.9", display: "PyTorch 2.9"}
      pytorch-2.7: {image: "labgpu/workspace:pytorch-2.7", display: "PyTorch 2.7"}
    defaults: {images: [pytorch, pytorch-2.9, pytorch-2.7]}
    """
)
LABELS_27 = {
    version_label("torch"): "2.7.1+cu126",
    version_label("cuda"): "12.6",
    version_label("cudnn"): "90501",
    version_label("nccl"): "2.21.5",
    version_label("python"): "3.11.2",
    version_label("jupyterlab"): "4.6.6",
    version_label("numpy"): "2.3.1",
}


def test_versions_text_names_the_stack_from_the_image_labels():
    assert image_versions_text(LABELS_27) == (
        "PyTorch 2.7.1+cu126, CUDA 12.6, cuDNN 9.5.1, NCCL 2.21.5, Python 3.11.2, JupyterLab 4.6.6"
    )
    # A CPU-only torch says "none" for what it lacks; cuDNN 8 numbers its versions differently.
    cpu = {version_label("torch"): "2.7.1+cpu", version_label("cuda"): "none", version_label("cudnn"): "8907"}
    assert image_versions_text(cpu) == "PyTorch 2.7.1+cpu, cuDNN 8.9.7"
    assert image_versions_text({}) == ""


def option_tags(form: str) -> dict[str, str]:
    return dict(re.findall(r'<option value="([^"]+)"([^>]*)>', form))


def test_the_spawn_page_shows_each_images_versions_and_greys_out_one_not_built():
    limits = resolve(load_policy_text(FLAVOUR_POLICY, "q.yaml"), "alice")
    form = options_form(
        limits,
        image_versions={
            "pytorch": "PyTorch 2.14.1, Python 3.11.2",
            "pytorch-2.9": None,
            "pytorch-2.7": image_versions_text(LABELS_27),
        },
    )
    tags = option_tags(form)
    assert "disabled" in tags["pytorch-2.9"] and "disabled" not in tags["pytorch-2.7"]
    assert "selected" in tags["pytorch"]
    assert "PyTorch 2.9 (not built on this server: ask an admin)" in form
    assert "<li><b>PyTorch 2.7</b>: PyTorch 2.7.1+cu126, CUDA 12.6, cuDNN 9.5.1" in form
    # The preselected image (the first, or the one chosen last time) is never a greyed-out one.
    form = options_form(
        limits, previous={"image": "pytorch-2.9"}, image_versions={"pytorch": None, "pytorch-2.9": None}
    )
    assert "selected" in option_tags(form)["pytorch-2.7"]
    # Without what Docker says, every image is offered as before.
    assert "disabled" not in options_form(limits)


def test_the_hub_asks_docker_once_per_image_and_treats_a_missing_one_as_not_built():
    from docker.errors import APIError, NotFound

    from labgpu.hub import image_info

    image_info._cache.clear()
    asked: list[str] = []

    async def inspect(ref: str) -> dict:
        asked.append(ref)
        if ref.endswith(":pytorch-2.9"):
            raise NotFound("no such image")
        if ref.endswith(":broken"):
            raise APIError("engine hiccup")
        return {"Config": {"Labels": LABELS_27}}

    choices = [
        ("pytorch-2.7", "labgpu/workspace:pytorch-2.7"),
        ("pytorch-2.9", "labgpu/workspace:pytorch-2.9"),
        ("x", "labgpu/workspace:broken"),
    ]
    found = asyncio.run(image_info.image_versions(inspect, choices))
    assert found == {"pytorch-2.7": image_versions_text(LABELS_27), "pytorch-2.9": None}
    asyncio.run(image_info.image_versions(inspect, choices))
    # Known answers are reused; an engine error is asked again next time.
    assert asked == [ref for _, ref in choices] + ["labgpu/workspace:broken"]
