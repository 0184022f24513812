"""Shared test plumbing: real parts or, under CI=true, a failure saying which part is missing."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(ok: bool, what: str, fix: str) -> None:
    """Skip when a real dependency is missing on a developer's machine; fail under CI=true,
    where a green run that tested nothing would be a lie."""
    if ok:
        return
    message = f"{what} is missing: {fix}"
    if IN_CI:
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


def docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


def image_available(image: str) -> bool:
    try:
        import docker

        docker.from_env().images.get(image)
        return True
    except Exception:
        return False


def proxy_available() -> bool:
    return shutil.which("configurable-http-proxy") is not None


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def postgres_cluster():
    """A throwaway PostgreSQL cluster for the whole test run (tests/postgres.py): Debian's
    PostgreSQL on a free port, in a temporary directory; stopped and deleted at the end."""
    from tests.postgres import PostgresCluster, postgres_bindir

    bindir = postgres_bindir()
    require(bindir is not None, "PostgreSQL", "run scripts/need-postgres.sh (apt-get install postgresql)")
    cluster = PostgresCluster(bindir)  # type: ignore[arg-type]
    yield cluster
    cluster.stop()
