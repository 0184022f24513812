"""The security suite runs against the real hub, Docker engine and proxy, like tests/e2e/:
a missing part skips it on a developer's machine and fails it under CI=true (``require``)."""

from __future__ import annotations

from tests.e2e.conftest import real_parts

__all__ = ["real_parts"]
