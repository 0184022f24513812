"""labgpu-doctor ships inside the workspace image, which copies only ``labgpu/__init__.py`` and
``labgpu/doctor/*.py`` (scripts/build-images.sh): the doctor must import nothing else of labgpu,
and nothing outside the standard library until a check runs (PyTorch and NVML, lazily)."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCTOR = ROOT / "labgpu" / "doctor"
BUILD_SCRIPT = ROOT / "scripts" / "build-images.sh"
# What a check may import when it runs: the workspace image provides them, a bare machine may not.
LAZY_THIRD_PARTY = {"torch", "pynvml"}


def doctor_modules() -> list[str]:
    """Every module of the package, by name (``__main__`` runs the doctor, so it is left out)."""
    names = [f"labgpu.doctor.{p.stem}" for p in DOCTOR.glob("*.py") if p.stem not in ("__init__", "__main__")]
    return ["labgpu.doctor", *sorted(names)]


def imports_of(path: Path) -> list[tuple[str, bool, int]]:
    """(module imported, whether at module level, line) for every import statement in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "labgpu":  # `from labgpu import doctor`: each name is a module
                found += [(f"labgpu.{alias.name}", id(node) in top_level, node.lineno) for alias in node.names]
            else:
                found.append((node.module, id(node) in top_level, node.lineno))
    return found


def is_doctor_or_stdlib(module: str) -> bool:
    if module in ("labgpu", "labgpu.doctor") or module.startswith("labgpu.doctor."):
        return True
    return module.split(".")[0] in sys.stdlib_module_names


def test_the_doctors_source_imports_only_itself_the_standard_library_and_lazily_torch_and_nvml():
    wrong = []
    for path in sorted(DOCTOR.glob("*.py")):
        for module, at_module_level, line in imports_of(path):
            where = f"{path.relative_to(ROOT)}:{line}: imports {module}"
            if module.startswith("labgpu") and not is_doctor_or_stdlib(module):
                wrong.append(f"{where} (outside labgpu.doctor: the image does not have it)")
            elif not is_doctor_or_stdlib(module) and module.split(".")[0] not in LAZY_THIRD_PARTY:
                wrong.append(f"{where} (not in the workspace image)")
            elif not is_doctor_or_stdlib(module) and at_module_level:
                wrong.append(f"{where} at module level (import it inside the check that needs it)")
    assert wrong == []


def test_importing_every_doctor_module_loads_nothing_else_of_labgpu_and_only_the_standard_library():
    probe = (
        "import importlib, json, sys\n"
        "before = set(sys.modules)\n"  # what the interpreter and site loaded at start-up
        f"for name in {doctor_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert [m for m in loaded if m.startswith("labgpu") and not is_doctor_or_stdlib(m)] == []
    assert [m for m in loaded if not is_doctor_or_stdlib(m)] == []
    assert set(doctor_modules()) <= set(loaded)


def image_files() -> list[Path]:
    """The files scripts/build-images.sh copies into the workspace image for the doctor."""
    match = re.search(r"doctor_files=\(([^)]*)\)", BUILD_SCRIPT.read_text())
    assert match, "scripts/build-images.sh no longer names doctor_files=(...)"
    return sorted(path for pattern in match.group(1).split() for path in ROOT.glob(pattern))


def test_the_image_copies_exactly_the_doctor_package_and_labgpus_init():
    package = {ROOT / "labgpu" / "__init__.py"} | {
        path for path in DOCTOR.rglob("*") if path.is_file() and "__pycache__" not in path.parts
    }
    assert set(image_files()) == package


def test_the_doctor_runs_from_the_files_the_image_copies_with_only_the_standard_library(tmp_path):
    for path in image_files():
        target = tmp_path / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LABGPU_GPUS")}
    # -S: no site-packages (so neither this checkout's labgpu nor any third-party package).
    where = subprocess.run(
        [sys.executable, "-S", "-c", "import labgpu.doctor.cli, labgpu.doctor.nccl; print(labgpu.doctor.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(tmp_path)
    done = subprocess.run(
        [sys.executable, "-S", "-m", "labgpu.doctor", "--json", "--skip-nccl", "--quick"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(done.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["torch"]["status"] == "FAIL" and "PyTorch is not installed" in checks["torch"]["detail"]
    assert checks["shm"]["figures"]["total_bytes"] > 0
    assert "Traceback" not in done.stderr
    nccl = subprocess.run(
        [sys.executable, "-S", "-m", "labgpu.doctor.nccl", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert nccl.returncode == 0 and "torchrun" in nccl.stdout
