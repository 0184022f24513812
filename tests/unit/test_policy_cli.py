"""`labgpu quotas check` and `labgpu quotas show`, run as an admin runs them (a real process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def labgpu(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "LABGPU_QUOTAS"}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "labgpu.cli", *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=60
    )


def test_check_passes_on_the_shipped_example_and_summarises_it():
    result = labgpu("quotas", "check", "quotas/quotas.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: quotas/quotas.yaml: 3 images, 3 groups")
    demo = next(line for line in result.stdout.splitlines() if line.startswith("demo "))
    assert demo.split()[1:4] == ["0", "0", "4G"]


def test_check_defaults_to_the_env_variable_then_the_repo_file(tmp_path):
    assert labgpu("quotas", "check").returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: {gpus: -1}\n")
    result = labgpu("quotas", "check", env={"LABGPU_QUOTAS": str(bad)})
    assert result.returncode == 1 and "defaults.gpus must be >= 0 (got -1)" in result.stderr


def test_check_prints_every_error_as_file_line_col_and_exits_1(tmp_path):
    (tmp_path / "quotas.yaml").write_text("defaults:\n  gpus: lots\n  colour: red\nusers:\n  alice: {memory: 1P}\n")
    result = labgpu("quotas", "check", "quotas.yaml", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[:3] == [
        "quotas.yaml:2:9: defaults.gpus must be a whole number (got 'lots')",
        "quotas.yaml:3:3: unknown key 'colour' in defaults (allowed: gpus, gpus_total, models, memory, cpus, shm, "
        "pids, images, named_servers, idle_timeout, max_runtime, share, disk)",
        "quotas.yaml:5:19: users.alice.memory must be between 64M and 64T (got 1P)",
    ]
    assert lines[3] == "3 errors; the hub keeps its last good policy until they are fixed."
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_show_prints_each_limit_and_the_entry_it_came_from():
    result = labgpu("quotas", "show", "dave", "--groups", "students,unknown", "--file", "quotas/quotas.yaml")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "user dave: groups nlp-lab, students"
    rows = {line.split()[0]: line for line in lines[1:]}
    assert "no effect: unknown" in result.stdout
    assert rows["memory"].split()[1:] == ["48G", "groups.nlp-lab"]
    assert rows["max_runtime"].split()[1:] == ["12h", "groups.students"]
    assert rows["pids"].split()[1:] == ["4096", "defaults"]
