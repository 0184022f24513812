"""The policy in force in a running hub: read from ``LABGPU_QUOTAS`` (or quotas/quotas.yaml),
reloaded when a file changes, the last good one kept when an edit is bad.

Only stats and reads the quota files; loading and resolving are :mod:`labgpu.quota.load`'s and
:mod:`labgpu.quota.limits`'s.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from labgpu.quota.errors import PolicyError
from labgpu.quota.limits import Limits, Policy, resolve
from labgpu.quota.load import load_policy, quota_files


def split_paths(value: str) -> list[str]:
    """``LABGPU_QUOTAS``: files or directories separated by commas or colons."""
    return [part.strip() for part in re.split(r"[,:]", value) if part.strip()]


# ---------------------------------------------------------------------------------------------
# Hot reload: keep the last good policy in force.


@dataclass(frozen=True)
class ReloadResult:
    """What :meth:`PolicyStore.refresh` saw: whether the files changed, whether the new
    version is now in force, and the error lines of a bad edit (empty if it was good)."""

    changed: bool
    applied: bool
    errors: tuple[str, ...] = ()


class PolicyStore:
    """The policy in force: reloaded when the quota files change, the last good one kept when
    an edit is bad. Cheap to call before every spawn (a few ``stat`` calls), but it reads and
    parses files: the hub calls :meth:`refresh` in its executor, never on its event loop.
    Thread-safe: spawners refresh from several executor threads at once."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]]):
        self.paths = [str(p) for p in paths]
        self._policy: Policy | None = None
        self._signature: tuple[tuple[str | int | None, ...], ...] | None = None
        self.errors: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def _current_signature(self) -> tuple[tuple[str | int | None, ...], ...]:
        stamps: list[tuple[str | int | None, ...]] = []
        for path in quota_files(self.paths):
            try:
                st = path.stat()
                stamps.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamps.append((str(path), None, None, None))
        for raw in self.paths:  # a file added to or removed from a directory changes the set
            try:
                stamps.append((raw, Path(raw).stat().st_mtime_ns))
            except OSError:
                stamps.append((raw, None))
        return tuple(stamps)

    def load(self) -> Policy:
        """First load, at hub start: raises PolicyError (every problem listed) so the hub
        refuses to start with a bad file."""
        signature = self._current_signature()
        self._policy = load_policy(self.paths)
        self._signature = signature
        self.errors = ()
        return self._policy

    @property
    def policy(self) -> Policy:
        """The policy in force (the last good one)."""
        if self._policy is None:
            return self.load()
        return self._policy

    def refresh(self) -> ReloadResult:
        """Reload if any file changed since the last look; a bad edit leaves the last good
        policy in force and its errors in ``result.errors`` (reported once per edit), whatever
        went wrong while reading it."""
        with self._lock:
            signature = self._current_signature()
            if signature == self._signature:
                return ReloadResult(changed=False, applied=False)
            self._signature = signature
            try:
                policy = load_policy(self.paths)
            except PolicyError as e:
                self.errors = e.errors
            except Exception as e:  # load_policy turns every problem into a PolicyError; a bug must not pass silently
                files = ", ".join(self.paths)
                what = " ".join(str(e).split())[:200]
                self.errors = (
                    f"{files}: could not be loaded ({type(e).__name__}: {what}); the last good policy stays in force",
                )
            else:
                self._policy, self.errors = policy, ()
                return ReloadResult(changed=True, applied=True)
            return ReloadResult(changed=True, applied=False, errors=self.errors)

    def limits(self, user: str, groups: Iterable[str] = ()) -> Limits:
        """Refresh, then resolve ``user``'s limits under the policy in force."""
        self.refresh()
        return resolve(self.policy, user, groups)


DEFAULT_QUOTAS_PATH = Path(__file__).resolve().parents[2] / "quotas" / "quotas.yaml"


def default_paths(environ: Mapping[str, str] = os.environ) -> list[str]:
    """``LABGPU_QUOTAS`` if set, else quotas/quotas.yaml of this repository."""
    value = environ.get("LABGPU_QUOTAS", "")
    return split_paths(value) if value.strip() else [str(DEFAULT_QUOTAS_PATH)]
