"""labgpu-doctor: the pure decision logic, and the real doctor run on this GPU-less machine."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labgpu.doctor.cli import main as doctor_main
from labgpu.doctor.measure import nccl_launch_command, nccl_transports
from labgpu.doctor.probe import (
    cpus_from_cgroup,
    default_workers,
    parse_assigned_gpus,
    parse_proc_driver_version,
    probe_shm,
)
from labgpu.doctor.report import guarded
from labgpu.doctor.verdicts import (
    CheckResult,
    bus_bandwidth,
    cudnn_version_text,
    driver_supports_cuda,
    expected_autograd,
    judge_autograd,
    judge_copy_bandwidth,
    judge_driver,
    judge_matmul,
    judge_nccl,
    judge_shm,
    judge_throughput,
    judge_visible_devices,
    min_driver_for_cuda,
    normalize_gpu_uuid,
    parse_version,
    pcie_link_gbps,
    peak_tflops,
    shm_enough,
    visible_matches_assigned,
)

ROOT = Path(__file__).resolve().parents[2]
HAS_TORCH = importlib.util.find_spec("torch") is not None
UUID_A = "GPU-3f2a9c1e-8b4d-4e0f-9a6b-1c2d3e4f5a6b"
UUID_B = "GPU-0badc0de-0000-4000-8000-123456789abc"

# --- driver vs CUDA runtime ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("driver", "cuda", "ok"),
    [
        ("525.60.13", "12.0", True),
        ("525.60.12", "12.0", False),
        ("525.60.13", "12.8", True),  # minor-version compatibility: 12.x runs on the 12.0 floor
        ("470.82.01", "12.1", False),
        ("450.80.02", "11.8", True),
        ("450.80.01", "11.8", False),
        ("580.65.06", "13.0", True),
        ("580.159.04", "13.2", True),
        ("575.57.08", "13.0", False),
    ],
)
def test_driver_floor_table(driver, cuda, ok):
    assert driver_supports_cuda(driver, cuda) is ok


def test_unknown_cuda_major_is_not_guessed():
    assert driver_supports_cuda("999.1", "14.0") is None
    result = judge_driver("580.65.06", "14.0", None)
    assert result.status == "WARN" and "not in this doctor's table" in result.detail


def test_old_driver_fails_with_the_driver_to_install():
    result = judge_driver("470.82.01", "12.4", "11.4", gpu_expected=True)
    assert result.status == "FAIL"
    assert "needs driver >= 525.60.13" in result.detail
    assert ">= 525.60.13" in result.fix


def test_minor_version_compatibility_is_named():
    result = judge_driver("580.159.04", "13.2", "13.0")
    assert result.status == "PASS" and "minor-version compatibility" in result.detail


def test_no_driver_is_a_skip_on_a_cpu_machine_and_a_failure_in_a_gpu_workspace():
    assert judge_driver(None, "12.8", gpu_expected=False).status == "SKIP"
    failed = judge_driver(None, "12.8", gpu_expected=True)
    assert failed.status == "FAIL" and "NVIDIA Container Toolkit" in failed.fix


@pytest.mark.parametrize("text", ["", "abc", "12.", "1..2", "v12.1"])
def test_parse_version_rejects_non_versions(text):
    with pytest.raises(ValueError, match="not a version number"):
        parse_version(text)


versions = st.lists(st.integers(min_value=0, max_value=999), min_size=1, max_size=3).map(
    lambda parts: ".".join(map(str, parts))
)


@settings(max_examples=200, deadline=None)
@given(driver=versions, newer=versions, cuda=st.sampled_from(["11.1", "11.8", "12.0", "12.9", "13.0", "13.5"]))
def test_a_newer_driver_never_loses_support(driver, newer, cuda):
    if parse_version(newer) >= parse_version(driver) and driver_supports_cuda(driver, cuda):
        assert driver_supports_cuda(newer, cuda)


def test_floor_of_a_minor_is_its_majors_floor():
    assert min_driver_for_cuda("12.6") == "525.60.13"
    assert min_driver_for_cuda("11.8") == "450.80.02"
    assert min_driver_for_cuda("11.0") == "450.36.06"


def test_proc_driver_version_is_parsed():
    text = (
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 06:54:38 UTC 2025\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
    )
    assert parse_proc_driver_version(text) == "580.65.06"
    assert parse_proc_driver_version("garbage") is None


def test_cudnn_versions_read_as_users_know_them():
    assert cudnn_version_text(92600) == "9.26.0"
    assert cudnn_version_text(8902) == "8.9.2"


# --- assigned vs visible GPUs ----------------------------------------------------------------

uuid_hex = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32).map(
    lambda h: f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
)


@settings(max_examples=200, deadline=None)
@given(st.lists(uuid_hex, unique=True, max_size=8))
def test_labgpu_gpus_round_trips(hexes):
    uuids = [f"GPU-{h}" for h in hexes]
    assert parse_assigned_gpus(",".join(uuids)) == uuids


@settings(max_examples=200, deadline=None)
@given(st.lists(uuid_hex, unique=True, min_size=1, max_size=8), st.randoms())
def test_visible_match_ignores_order_case_and_prefix(hexes, rnd):
    assigned = [f"GPU-{h}" for h in hexes]
    visible = [h.upper() if rnd.random() < 0.5 else f"GPU-{h}" for h in hexes]  # torch prints no prefix
    rnd.shuffle(visible)
    assert visible_matches_assigned(visible, assigned)
    assert not visible_matches_assigned(visible[1:], assigned)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("GPU-1234", "entry 1: 'GPU-1234' is not a GPU UUID"),
        (f"{UUID_A},,{UUID_B}", "entry 2 is empty"),
        (f"{UUID_A},{UUID_A.upper()}", "entry 2 repeats"),
        (f"{UUID_A},0", "entry 2: '0' is not a GPU UUID"),
    ],
)
def test_bad_labgpu_gpus_names_the_entry(text, message):
    with pytest.raises(ValueError, match=message):
        parse_assigned_gpus(text)


def test_empty_labgpu_gpus_means_no_gpus_and_mig_uuids_are_accepted():
    assert parse_assigned_gpus("") == []
    mig = "MIG-GPU-3f2a9c1e-8b4d-4e0f-9a6b-1c2d3e4f5a6b/1/0"
    assert parse_assigned_gpus(mig) == [mig]
    assert normalize_gpu_uuid("MIG-3f2a9c1e-8b4d-4e0f-9a6b-1c2d3e4f5a6b") == UUID_A[4:]


def test_device_mismatch_names_missing_and_extra_gpus():
    result = judge_visible_devices([UUID_B], [UUID_A], "PyTorch")
    assert result.status == "FAIL"
    assert f"assigned but not visible: {UUID_A}" in result.detail
    assert f"visible but not assigned: {UUID_B}" in result.detail
    assert "restart your server" in result.fix


def test_devices_pass_and_unset_assignment_skips():
    assert judge_visible_devices([UUID_A[4:], UUID_B], [UUID_B, UUID_A], "PyTorch").status == "PASS"
    unset = judge_visible_devices([UUID_A], None, "NVML")
    assert unset.status == "SKIP" and "LABGPU_GPUS is not set" in unset.detail


# --- autograd, matmul ------------------------------------------------------------------------


def test_autograd_reference_values():
    # z = x^2 + 2xy + y^3: dz/dx = 2x + 2y = 10, dz/dy = 2x + 3y^2 = 31 at (2, 3).
    assert expected_autograd(2.0, 3.0) == (43.0, 10.0, 31.0)
    assert judge_autograd("cuda:0", (43.0, 10.0, 31.0)).status == "PASS"
    wrong = judge_autograd("cuda:0", (43.0, 10.0, 38.0))
    assert wrong.status == "FAIL" and "expected z = 43, dz/dx = 10, dz/dy = 31" in wrong.detail


@pytest.mark.parametrize(
    ("model", "mode", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4),
        ("NVIDIA H100 PCIe", "bf16", 756.0),
        ("NVIDIA H100 NVL", "tf32", 417.5),
        ("NVIDIA H200", "bf16", 989.4),
        ("NVIDIA GH200 480GB", "bf16", 989.4),
        ("NVIDIA A100-SXM4-80GB", "tf32", 156.0),
        ("NVIDIA L40S", "bf16", 362.0),
        ("NVIDIA L4", "bf16", 121.0),
        ("NVIDIA GeForce RTX 4090", "fp32", 82.6),
        ("Tesla V100-SXM2-16GB", "bf16", None),
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "bf16", None),
        ("Some Future GPU", "bf16", None),
    ],
)
def test_peak_table(model, mode, peak):
    assert peak_tflops(model, mode) == peak


def test_throughput_thresholds():
    assert judge_throughput(676.0, 989.4) == "PASS"
    assert judge_throughput(300.0, 989.4) == "WARN"
    assert judge_throughput(100.0, 989.4) == "FAIL"
    assert judge_throughput(5.0, None) == "PASS"


def device(index, model, tflops, rel_error=1e-3):
    return {"index": index, "model": model, "tflops": tflops, "rel_error": rel_error, "n": 8192}


def test_matmul_report_names_the_slowest_gpu_and_its_share_of_peak():
    result = judge_matmul(
        "bf16", [device(0, "NVIDIA H100 80GB HBM3", 700.0), device(1, "NVIDIA H100 80GB HBM3", 300.0)]
    )
    assert result.status == "WARN"
    assert "300.0 TFLOP/s on GPU 1" in result.detail and "30% of the 989.4" in result.detail
    assert "slowest of 2 GPUs" in result.detail and "throttle" in result.fix
    healthy = judge_matmul("bf16", [device(0, "NVIDIA H100 80GB HBM3", 676.0)])
    assert healthy.status == "PASS" and "68% of the 989.4" in healthy.detail


@pytest.mark.parametrize("error", [0.5, math.nan])
def test_wrong_matmul_results_fail_whatever_the_speed(error):
    result = judge_matmul("fp32", [device(0, "NVIDIA H200", 60.0, rel_error=error)])
    assert result.status == "FAIL" and "computes wrong fp32" in result.detail


# --- copies, /dev/shm ------------------------------------------------------------------------


def test_copy_bandwidth_against_the_pcie_link():
    link = pcie_link_gbps(5, 16)
    assert link == pytest.approx(63.0, abs=0.1)
    assert judge_copy_bandwidth(52.0, 50.0, link, "PCIe Gen5 x16").status == "PASS"
    slow = judge_copy_bandwidth(12.0, 50.0, link, "PCIe Gen5 x16")
    assert slow.status == "WARN" and "host->device 12.0 GB/s" in slow.detail and "PCIE" in slow.fix
    assert judge_copy_bandwidth(12.0, 13.0, None).status == "PASS"
    assert judge_copy_bandwidth(4.0, 13.0, None).status == "WARN"
    assert pcie_link_gbps(None, 16) is None


def test_docker_default_shm_fails_with_what_to_ask_for():
    result = judge_shm(64 * 1024**2, 64 * 1024**2, workers=8)
    assert result.status == "FAIL"
    assert "/dev/shm is 64 MiB (Docker's default)" in result.detail and "bus error" in result.detail
    assert "LABGPU_SHM_SIZE to at least 2 GiB" in result.fix and "num_workers<=0" in result.fix


def test_shm_size_against_workers():
    assert shm_enough(2 * 1024**3, 8) and not shm_enough(2 * 1024**3 - 1, 8)
    assert judge_shm(2 * 1024**3, 2 * 1024**3, workers=8).status == "PASS"
    small = judge_shm(1024**3, 1024**3, workers=8)
    assert small.status == "WARN" and "num_workers<=4" in small.fix
    full = judge_shm(16 * 1024**3, 100 * 1024**2, workers=4)
    assert full.status == "WARN" and "only 100 MiB is free" in full.detail


def test_shm_probe_reads_a_real_filesystem(tmp_path):
    total, free = probe_shm(str(tmp_path))
    assert total > 0 and 0 <= free <= total
    assert probe_shm(str(tmp_path / "missing")) == (None, None)
    assert judge_shm(None, None, 4, str(tmp_path / "missing")).status == "FAIL"


def test_cpu_limits_from_cgroups():
    assert cpus_from_cgroup("max 100000") is None
    assert cpus_from_cgroup("250000 100000") == 2.5
    assert cpus_from_cgroup(None, "-1", "100000") is None
    assert cpus_from_cgroup(None, "400000", "100000") == 4.0
    assert cpus_from_cgroup("junk") is None
    assert default_workers(64, None) == 8
    assert default_workers(64, 2.5) == 2
    assert default_workers(16, 0.5) == 1


# --- NCCL ------------------------------------------------------------------------------------


def nccl_report(busbw=380.0, correct=True, ddp=True, world=2):
    return {
        "world_size": world,
        "allreduce_correct": correct,
        "allreduce_got": [3.0, 3.0] if correct else [2.0, 3.0],
        "allreduce_expected": 3.0,
        "ddp_grads_equal": ddp,
        "transports": ["P2P/CUMEM"],
        "sizes": [
            {"bytes": 1 << 20, "algbw_gbps": 20.0, "busbw_gbps": 20.0},
            {"bytes": 256 << 20, "algbw_gbps": busbw * world / (2 * (world - 1)), "busbw_gbps": busbw},
        ],
    }


def test_bus_bandwidth_formula():
    assert bus_bandwidth(100.0, 2) == 100.0
    assert bus_bandwidth(100.0, 8) == 175.0
    assert bus_bandwidth(100.0, 1) == 0.0


def test_nccl_judgement():
    ok = judge_nccl(nccl_report(), "nvlink", "NVLink (18 active links per GPU)")
    assert ok.status == "PASS" and "bus bandwidth 380.0 GB/s at 256 MiB" in ok.detail
    assert "P2P/CUMEM" in ok.detail
    slow = judge_nccl(nccl_report(busbw=12.0), "nvlink", "NVLink (18 active links per GPU)")
    assert slow.status == "WARN" and "nvidia-smi topo -m" in slow.fix
    assert judge_nccl(nccl_report(busbw=12.0), "pcie", "PCIe").status == "PASS"
    wrong = judge_nccl(nccl_report(correct=False), "pcie", "PCIe")
    assert wrong.status == "FAIL" and "NCCL_P2P_DISABLE=1" in wrong.fix
    assert judge_nccl(nccl_report(ddp=False), "pcie", "PCIe").status == "FAIL"


def test_nccl_launch_command_runs_one_worker_per_gpu():
    command = nccl_launch_command("/usr/bin/python3", 4, "/tmp/x.json", [1, 16, 256], 20)
    assert command[:3] == ["/usr/bin/python3", "-m", "torch.distributed.run"]
    assert "--nproc_per_node=4" in command and "--standalone" in command
    assert command[command.index("-m", 3) + 1] == "labgpu.doctor.nccl"
    assert command[-4:] == ["--sizes-mb", "1,16,256", "--iters", "20"]


def test_nccl_transports_from_its_log():
    log = (
        "node:1:2 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM/read\n"
        "node:1:2 [1] NCCL INFO Channel 01/0 : 1[1] -> 0[0] via P2P/CUMEM/read\n"
        "node:1:2 [0] NCCL INFO Channel 02/0 : 0[0] -> 1[1] via SHM/direct/direct\n"
    )
    assert nccl_transports(log) == ["P2P/CUMEM/read", "SHM/direct/direct"]


# --- the real doctor on this machine (no GPU; PyTorch absent from the hub's environment) -----


def test_a_crashing_check_becomes_a_failure_not_a_traceback():
    def broken() -> CheckResult:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    [result] = guarded("matmul", broken)
    assert result.status == "FAIL" and "illegal memory access" in result.detail


def run_json(capsys, argv=()):
    code = doctor_main(["--json", *argv])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.skipif(HAS_TORCH, reason="this test is about a machine without PyTorch")
def test_without_torch_the_doctor_says_so_and_checks_what_it_can(capsys, monkeypatch):
    monkeypatch.delenv("LABGPU_GPUS", raising=False)
    code, report = run_json(capsys)
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 1 and not report["ok"]
    assert checks["torch"]["status"] == "FAIL" and "PyTorch is not installed" in checks["torch"]["detail"]
    assert "pip install torch" in checks["torch"]["fix"]
    assert checks["shm"]["status"] in ("PASS", "WARN", "FAIL") and checks["shm"]["figures"]["total_bytes"] > 0
    for name in ("cuda", "autograd", "matmul-bf16", "copy-bandwidth", "nccl"):
        assert checks[name]["status"] == "SKIP"
    assert report["summary"]["FAIL"] == 1 + (checks["shm"]["status"] == "FAIL")


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="this test is about a machine without a GPU")
def test_assigned_gpus_that_are_not_there_fail(capsys, monkeypatch):
    monkeypatch.setenv("LABGPU_GPUS", f"{UUID_A},{UUID_B}")
    code, report = run_json(capsys, ["--skip-nccl"])
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 1
    assert checks["devices"]["status"] == "FAIL"
    assert f"assigned but not visible: {UUID_A}, {UUID_B}" in checks["devices"]["detail"]
    assert checks["driver"]["status"] == "FAIL" and "no NVIDIA driver" in checks["driver"]["detail"]
    assert checks["nccl"]["detail"] == "skipped (--skip-nccl)"


def test_a_malformed_labgpu_gpus_is_reported(capsys, monkeypatch):
    monkeypatch.setenv("LABGPU_GPUS", "0,1")
    _, report = run_json(capsys)
    assignment = next(c for c in report["checks"] if c["name"] == "assignment")
    assert assignment["status"] == "FAIL" and "LABGPU_GPUS entry 1: '0' is not a GPU UUID" in assignment["detail"]


def test_workers_option_drives_the_shm_check(capsys):
    _, report = run_json(capsys, ["--workers", "3"])
    shm = next(c for c in report["checks"] if c["name"] == "shm")
    assert shm["figures"]["workers"] == 3 and shm["figures"]["needed_bytes"] == 3 * 256 * 1024**2
    assert doctor_main(["--workers", "0"]) == 2


def test_command_line_prints_a_readable_report():
    env = {k: v for k, v in os.environ.items() if k != "LABGPU_GPUS"}
    done = subprocess.run(
        [sys.executable, "-m", "labgpu.doctor", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("labgpu-doctor on ")
    assert any(
        line.startswith("PASS  shm") or line.startswith("WARN  shm") or line.startswith("FAIL  shm") for line in lines
    )
    assert lines[-1].startswith("labgpu-doctor: ") and "SKIP" in lines[-1]
    assert "Traceback" not in done.stdout + done.stderr
    fails = int(re.search(r"(\d+) FAIL", lines[-1]).group(1))
    assert done.returncode == (1 if fails else 0)
