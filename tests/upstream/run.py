"""Run DockerSpawner's own test suite against GPUDockerSpawner: a subclass must not break what
it inherits.

    python -m tests.upstream.run      (scripts/test.sh runs it after pytest)

Downloads the sdist of the installed dockerspawner release from PyPI (once: it is kept in
test-output/upstream/), unpacks its ``tests/test_dockerspawner.py`` and runs it twice with the
fixtures of :mod:`tests.upstream.plugin`: once as published, against DockerSpawner, and once
with GPUDockerSpawner in DockerSpawner's place. Fails if a test that passes with DockerSpawner
fails with ours. Tests that fail with DockerSpawner too (an image this machine cannot pull, a
JupyterHub API the release predates) are counted and listed, not held against us.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "test-output" / "upstream"
SUITE = "tests/test_dockerspawner.py"
IN_CI = os.environ.get("CI", "").lower() == "true"


class Unavailable(RuntimeError):
    """Something the suite needs (the sdist, Docker) cannot be had here."""


def upstream_suite(version: str, cache: Path = CACHE) -> Path:
    """``tests/test_dockerspawner.py`` of dockerspawner ``version``, unpacked from its sdist."""
    root = cache / f"dockerspawner-{version}"
    suite = root / SUITE
    if suite.is_file():
        return suite
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"dockerspawner-{version}.tar.gz"
    if not sdist.is_file():
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        done = subprocess.run(
            [*pip, f"dockerspawner=={version}", "--dest", str(cache)], capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0 or not sdist.is_file():
            raise Unavailable(f"could not download the dockerspawner {version} sdist from PyPI:\n{done.stderr[-2000:]}")
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(f"dockerspawner-{version}/tests/")]
        if not any(m.name.endswith(SUITE) for m in members):
            raise Unavailable(f"{sdist.name} carries no {SUITE}")
        archive.extractall(cache, members=members, filter="data")
    return suite


def run_suite(suite: Path, spawner: str, report: Path, extra: list[str]) -> dict[str, str]:
    """Run the suite with ``LABGPU_UPSTREAM_SPAWNER=spawner``; ``{test id: outcome}`` from its JUnit XML."""
    report.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(suite),
        "-c",
        str(Path(__file__).with_name("pytest.ini")),
        "--rootdir",
        str(suite.parent.parent),
        "-p",
        "tests.upstream.plugin",
        "-p",
        "no:cacheprovider",
        "-q",
        "--tb=line",
        f"--junitxml={report}",
        *extra,
    ]
    env = {**os.environ, "LABGPU_UPSTREAM_SPAWNER": spawner, "PYTHONPATH": str(REPO)}
    log = report.with_suffix(".log")
    with open(log, "w") as out:
        subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=900)
    if not report.is_file():
        raise RuntimeError(f"pytest wrote no report for the {spawner} run; see {log}")
    return outcomes(report)


def outcomes(report: Path) -> dict[str, str]:
    """``{test name: passed | failed | error | skipped}`` from a JUnit XML report."""
    results = {}
    for case in ET.parse(report).iter("testcase"):
        kinds = {child.tag for child in case}
        outcome = next((k for k in ("error", "failure", "skipped") if k in kinds), "passed")
        results[case.get("name", "?")] = "failed" if outcome == "failure" else outcome
    return results


def compare(theirs: dict[str, str], ours: dict[str, str]) -> list[str]:
    """Tests that pass with DockerSpawner and do not with ours (missing counts as not passing)."""
    return sorted(name for name, outcome in theirs.items() if outcome == "passed" and ours.get(name) != "passed")


def docker_reachable() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments for both runs (e.g. -k cpu_limit)")
    args = parser.parse_args(argv)
    version = importlib.metadata.version("dockerspawner")
    try:
        if not docker_reachable():
            raise Unavailable("the Docker engine cannot be reached")
        suite = upstream_suite(version)
    except Unavailable as e:
        print(f"[upstream] DockerSpawner's suite cannot run: {e}", file=sys.stderr)
        return 1 if IN_CI else 0
    theirs = run_suite(suite, "theirs", CACHE / "theirs.xml", args.pytest_args)
    ours = run_suite(suite, "ours", CACHE / "ours.xml", args.pytest_args)
    passed_theirs = sum(o == "passed" for o in theirs.values())
    passed_ours = sum(o == "passed" for o in ours.values())
    print(
        f"[upstream] dockerspawner {version} {SUITE}: {len(theirs)} tests; "
        f"DockerSpawner passes {passed_theirs}, GPUDockerSpawner passes {passed_ours} "
        f"(logs: {CACHE.relative_to(REPO)}/theirs.log, ours.log)",
        file=sys.stderr,
    )
    both = sorted(n for n, o in theirs.items() if o != "passed" and ours.get(n) != "passed")
    if both:
        print(f"[upstream] not passing with either ({len(both)}): {', '.join(both)}", file=sys.stderr)
    regressions = compare(theirs, ours)
    if passed_theirs == 0:
        print("[upstream] no test passed with DockerSpawner itself: nothing was compared", file=sys.stderr)
        return 1
    if regressions:
        print(
            f"[upstream] FAILED: {len(regressions)} test(s) pass with DockerSpawner but not with GPUDockerSpawner: "
            + ", ".join(regressions),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
