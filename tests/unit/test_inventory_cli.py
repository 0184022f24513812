"""`labgpu gpus` as an admin runs it: the real entry point in a real process."""

import json
import subprocess
import sys
from pathlib import Path

from labgpu.db.ledger import Ledger
from labgpu.gpus.inventory import ReplayInventory

DATA = Path(__file__).parent.parent / "data"
LABGPU = [sys.executable, "-m", "labgpu.cli"]


def labgpu(*args, env=None):
    return subprocess.run([*LABGPU, *args], capture_output=True, text=True, timeout=60, env=env)


def test_gpus_table_shows_who_holds_each_gpu(tmp_path):
    db = tmp_path / "ledger.sqlite"
    with Ledger(db) as ledger:
        ledger.sync_inventory(ReplayInventory(DATA / "a100x8-two-nvlink-islands.json").gpus())
        ledger.allocate("alice", "", 2)
        ledger.allocate("bob", "big", 1)
    result = labgpu("gpus", "--db", str(db))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["IDX", "UUID", "MODEL", "MEMORY", "HEALTH", "HELD", "BY", "SINCE"]
    assert lines[1].split()[:2] == ["0", "GPU-b8a1…"] and " alice " in lines[1]
    assert " bob/big " in lines[3] and lines[4].split()[-1] == "-"
    assert lines[-1] == "5 of 8 GPUs free; NVLink islands: {0,1,2,3}, {4,5,6,7}"


def test_gpus_from_a_source_with_an_unhealthy_gpu_as_json(tmp_path):
    lost = tmp_path / "lost.json"
    document = json.loads((DATA / "a100x8-gpu3-lost.json").read_text())
    lost.write_text(json.dumps(document["snapshots"][1]))
    result = labgpu("gpus", "--source", f"replay:{lost}")
    assert result.returncode == 0
    assert "UNHEALTHY: NVML: GPU is lost" in result.stdout.splitlines()[4]
    assert result.stdout.splitlines()[-1].startswith("7 of 8 GPUs free")
    as_json = json.loads(labgpu("gpus", "--source", f"replay:{lost}", "--json").stdout)
    assert [g["healthy"] for g in as_json].count(False) == 1 and as_json[0]["held_by"] is None


def test_gpus_errors_are_one_clear_line(tmp_path):
    missing = labgpu("gpus", "--db", str(tmp_path / "nope.sqlite"))
    assert missing.returncode == 1 and missing.stderr.startswith("labgpu gpus: no ledger at ")
    bad = tmp_path / "gpus.yaml"
    bad.write_text("gpus:\n  - {model: A100}\n")
    result = labgpu("gpus", "--source", f"static:{bad}")
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"labgpu gpus: {bad}:2:5: gpus[0].uuid must be")
    assert "Traceback" not in result.stderr
