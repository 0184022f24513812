"""images/hub/entrypoint.sh, run with stand-ins for jupyterhub and labgpu: what the hub's container
does before the hub starts (stale pid files, the cookie secret, the poller's GPU list)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labgpu.gpus.inventory import inventory_source

ENTRYPOINT = Path(__file__).resolve().parents[2] / "images/hub/entrypoint.sh"


@pytest.fixture
def run(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("jupyterhub", "labgpu"):  # print how they were called
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*"\n')
        (bin_dir / name).chmod(0o755)
    state = tmp_path / "state"

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        path = f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"
        environ = {"PATH": path, "LABGPU_STATE_DIR": str(state), **env}
        return subprocess.run(["sh", str(ENTRYPOINT), *args], env=environ, capture_output=True, text=True, timeout=60)

    return run, state


def test_the_hub_starts_with_its_config_a_private_state_and_no_stale_pid_files(run):
    run, state = run
    state.mkdir()
    (state / "proxy.pid").write_text("23")
    (state / "jupyterhub.pid").write_text("7")
    result = run("jupyterhub", "--debug")
    assert result.stdout == "jupyterhub --debug -f /srv/labgpu/jupyterhub_config.py\n"
    assert not (state / "proxy.pid").exists() and not (state / "jupyterhub.pid").exists()
    assert state.stat().st_mode & 0o777 == 0o700
    secret = (state / "cookie_secret").read_text().strip()
    assert len(bytes.fromhex(secret)) == 32
    assert (state / "cookie_secret").stat().st_mode & 0o777 == 0o600
    run("jupyterhub")
    assert (state / "cookie_secret").read_text().strip() == secret  # made once


def test_a_hub_without_the_pollers_gpu_list_says_where_it_comes_from(run):
    run, state = run
    result = run("jupyterhub", LABGPU_GPU_SOURCE=f"static:{state}/gpus.json", LABGPU_INVENTORY_WAIT="0")
    assert result.returncode == 1
    assert f"no GPU list at {state}/gpus.json after 0s: the poller service writes it" in result.stderr
    assert "LABGPU_GPU_SOURCE=none" in result.stderr


def test_the_poller_writes_the_gpu_list_the_hub_reads_then_runs_the_poller(run, tmp_path):
    run, _ = run
    listing = tmp_path / "gpus.json"
    settings = {"LABGPU_POLLER_SOURCE": "simulated:2xH100", "LABGPU_INVENTORY_FILE": str(listing)}
    result = run("poller", "--db", "/x/ledger.sqlite", **settings)
    assert result.stdout == "labgpu poller --source simulated:2xH100 --db /x/ledger.sqlite\n", result.stderr
    assert inventory_source(f"static:{listing}").gpus() == inventory_source("simulated:2xH100").gpus()


def test_anything_else_runs_as_given(run):
    run, state = run
    assert run("labgpu", "backup", "/b").stdout == "labgpu backup /b\n"
    assert not state.exists()  # no hub, no state preparation
