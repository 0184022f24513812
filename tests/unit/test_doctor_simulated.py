"""labgpu-doctor in a workspace on simulated GPUs: it says so, checks the env against the grant,
and skips the device checks instead of failing them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from labgpu.doctor.probe import probe_machine
from labgpu.doctor.verdicts import judge_simulated

ROOT = Path(__file__).resolve().parents[2]
A = "GPU-d022712b-458f-5ed2-b682-8da6edc97fd2"
B = "GPU-f6ff5d88-3c62-5805-8dcc-d654f88b85b0"


def test_a_simulated_grant_whose_env_matches_passes_and_says_simulated():
    result = judge_simulated([A, B], f"{A},{B}")
    assert result.status == "PASS"
    assert "SIMULATED (demo): 2 granted" in result.detail and A in result.detail


def test_an_env_that_does_not_match_the_grant_fails_with_what_to_do():
    result = judge_simulated([A, B], "all")
    assert result.status == "FAIL"
    assert result.detail == f"NVIDIA_VISIBLE_DEVICES (all) does not match the grant LABGPU_GPUS ({A}, {B})"
    assert "restart your server from the hub" in result.fix


def test_simulated_gpus_are_not_expected_to_be_usable_devices():
    machine = probe_machine({"LABGPU_GPUS": A, "LABGPU_GPUS_SIMULATED": "1"})
    assert machine.simulated and machine.assigned == [A]
    assert machine.gpu_expected is (bool(machine.nvml_devices) or machine.device_nodes)


def test_the_doctor_in_a_simulated_workspace_reports_simulated_and_exits_zero():
    env = {**os.environ, "LABGPU_GPUS": f"{A},{B}", "NVIDIA_VISIBLE_DEVICES": f"{A},{B}", "LABGPU_GPUS_SIMULATED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "labgpu.doctor", "--json", "--quick", "--skip-nccl"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(done.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["simulated"]["status"] == "PASS"
    assert checks["devices"]["status"] == "SKIP" and "simulated" in checks["devices"]["detail"]
    assert report["machine"]["simulated"] is True
    # No torch on the test machine: that is its only FAIL; nothing GPU-related fails.
    assert {c["name"] for c in report["checks"] if c["status"] == "FAIL"} <= {"torch"}
