"""The layout holds: pure modules import no I/O library, each package imports only what
ARCHITECTURE.md lets it, and no module grows past ~600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "labgpu"

# Modules that take plain data in and give plain data out (ARCHITECTURE.md, "Pure modules").
PURE = [
    "units",
    "labels",
    "quota",
    "gpus.allocator",
    "gpus.reconcile",
    "gpus.telemetry",
    "fairshare",
    "hub.containers",
    "hub.admin_extras",
    "metrics.series",
    "metrics.accounting",
    "web.svg",
    "ssh.keys",
    "ssh.access",
    "kube.objects",
    "kube.placement",
]
IO_LIBRARIES = {
    "docker",
    "dockerspawner",
    "pynvml",
    "tornado",
    "sqlalchemy",
    "alembic",
    "jupyterhub",
    "requests",
    "kubespawner",
    "kubernetes_asyncio",
}

# Which labgpu packages each package may import (besides itself and the shared vocabulary).
VOCABULARY = {"labgpu", "labgpu.units", "labgpu.labels"}
ALLOWED = {
    "quota": set(),
    "gpus": set(),
    "fairshare": {"gpus"},
    "db": {"gpus", "quota"},
    "hub": {"quota", "gpus", "fairshare", "db"},
    "services": {"quota", "gpus", "fairshare", "db"},
    "cli": {"quota", "gpus", "fairshare", "db", "hub", "services", "web", "metrics", "ssh", "kube"},
    # hub: the GPU queue's ordering and PolicyView (positions, estimates, fair-share factors)
    "web": {"quota", "gpus", "fairshare", "db", "hub", "metrics", "ssh"},
    "ssh": {"quota", "db"},
    "kube": {"quota", "gpus", "fairshare", "db", "hub"},
    # the queue's fair-share view of the policy (hub.gpu_queue.PolicyView), for fair-share factors
    "metrics": {"quota", "gpus", "fairshare", "db", "hub"},
}
MAX_LINES = 620


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        found.append((name, path))
    return found


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def is_pure(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in PURE)


@pytest.mark.parametrize(("name", "path"), [m for m in modules() if is_pure(m[0])], ids=lambda v: str(v))
def test_pure_modules_import_no_io_library(name, path):
    used = {i.split(".")[0] for i in imports_of(path)} & IO_LIBRARIES
    assert not used, f"labgpu.{name} is pure (ARCHITECTURE.md) but imports {sorted(used)}"


@pytest.mark.parametrize(("name", "path"), modules(), ids=lambda v: str(v))
def test_packages_import_only_what_the_architecture_allows(name, path):
    package = name.split(".")[0]
    if package not in ALLOWED:
        return  # units, labels, doctor (its own test: test_doctor_isolation.py)
    for imported in imports_of(path):
        if not imported.startswith("labgpu") or imported in VOCABULARY:
            continue
        target = imported.split(".")[1]
        assert target == package or target in ALLOWED[package], (
            f"labgpu.{name} imports {imported}: the {package} package may use only "
            f"{sorted(ALLOWED[package] | {package})} (ARCHITECTURE.md)"
        )


def test_no_module_is_over_600_lines():
    long = {name: n for name, path in modules() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by concern: {long}"
