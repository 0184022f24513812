"""Demand traces for the fair-share simulator: the model, the JSON Lines reader and writer.

Trace format (JSON Lines, times in hours from the start of the trace):

    {"type": "cluster", "gpus": 8, "horizon_h": 168, "half_life_h": 168,
     "groups": {"vision": {"share": 1, "pool": 6}},
     "users": {"ava": {"group": "vision", "share": 1, "max_gpus": 4, "kind": "heavy"}},
     "policy": {"idle_timeout_h": 1, "max_runtime_h": 24, "warn_before_h": 0.25,
                "reclaim_only_when_waiting": true}}
    {"type": "session", "id": "s1", "at_h": 9.5, "user": "ava", "gpus": 4,
     "phases": [["busy", 5.0], ["idle", 10.0], ["busy", 3.0], ["idle", 8.0]]}

A session asks for GPUs at ``at_h`` and then runs its phases (busy: the GPUs compute; idle:
held but unused). Reading a trace checks every field and names ``file:line`` and the field at
fault; ``labgpu.fairshare.simulator`` replays what it returns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labgpu.fairshare.scheduler import Shares

__all__ = [
    "HOUR",
    "PHASE_KINDS",
    "ReclaimSettings",
    "Session",
    "Trace",
    "TraceError",
    "TraceUser",
    "dump_trace",
    "load_trace",
    "parse_trace",
]

HOUR = 3600.0
PHASE_KINDS = ("busy", "idle")


class TraceError(ValueError):
    """A trace file that cannot be replayed; the message says where and what is allowed."""


@dataclass(frozen=True)
class TraceUser:
    """A user of the traced cluster: their group and share, GPU cap, and light/heavy label."""

    name: str
    group: str | None = None
    share: float = 1.0
    max_gpus: int | None = None
    kind: str | None = None  # "light" or "heavy"; None: classified by demand


@dataclass(frozen=True)
class ReclaimSettings:
    """The fairshare policy's reclamation knobs (seconds), as in the quota file."""

    idle_timeout: float | None = HOUR
    max_runtime: float | None = 24 * HOUR
    warn_before: float = 0.25 * HOUR
    only_when_waiting: bool = True
    idle_threshold: float = 0.05


@dataclass(frozen=True)
class Session:
    """One request for GPUs: when (seconds), who, how many, and its busy/idle phases."""

    id: str
    at: float  # seconds
    user: str
    gpus: int
    phases: tuple[tuple[str, float], ...]  # (kind, seconds)
    max_runtime: float | None = None


@dataclass(frozen=True)
class Trace:
    """A whole trace: the cluster (GPUs, groups, shares, pools, reclaim policy) and its sessions."""

    gpus: int
    horizon: float
    half_life: float
    users: dict[str, TraceUser]
    group_shares: dict[str, float]
    pools: dict[str, int]
    reclaim: ReclaimSettings
    sessions: tuple[Session, ...]
    name: str = "trace"

    def shares(self) -> Shares:
        return Shares(
            users={u.name: u.share for u in self.users.values()},
            group_of={u.name: u.group for u in self.users.values() if u.group},
            groups=dict(self.group_shares),
        )


def _number(value: Any, where: str, *, minimum: float = 0.0, allow_none: bool = False, integer: bool = False) -> Any:
    if value is None and allow_none:
        return None
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise TraceError(f"{where} must be {kind} >= {minimum:g} (got {value!r})")
    if not math.isfinite(value) or value < minimum:
        raise TraceError(f"{where} must be {kind} >= {minimum:g} (got {value!r})")
    return value


def parse_trace(text: str, source: str = "trace") -> Trace:
    """Parse a JSON Lines trace; errors name ``source:line`` and the field at fault."""
    cluster: dict[str, Any] | None = None
    cluster_line = 0
    raw_sessions: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise TraceError(f"{source}:{number}:{error.colno}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise TraceError(f'{source}:{number}: each line must be a JSON object with a "type"')
        kind = record.get("type")
        if kind == "cluster":
            if cluster is not None:
                raise TraceError(f'{source}:{number}: a second "cluster" line (the first is line {cluster_line})')
            cluster, cluster_line = record, number
        elif kind == "session":
            raw_sessions.append((number, record))
        else:
            raise TraceError(f'{source}:{number}: type must be "cluster" or "session" (got {kind!r})')
    if cluster is None:
        raise TraceError(f'{source}: no "cluster" line; the first line should be {{"type": "cluster", "gpus": 8, ...}}')
    at = f"{source}:{cluster_line}"
    gpus = _number(cluster.get("gpus", 8), f"{at}: gpus", minimum=1, integer=True)
    horizon = _number(cluster.get("horizon_h", 168), f"{at}: horizon_h", minimum=0.01) * HOUR
    half_life = _number(cluster.get("half_life_h", 168), f"{at}: half_life_h", minimum=0.01) * HOUR
    groups_raw = cluster.get("groups", {}) or {}
    if not isinstance(groups_raw, dict):
        raise TraceError(f"{at}: groups must be an object of group name -> {{share, pool}}")
    group_shares: dict[str, float] = {}
    pools: dict[str, int] = {}
    for name, spec in groups_raw.items():
        spec = spec or {}
        group_shares[name] = _number(spec.get("share", 1), f"{at}: groups.{name}.share")
        if spec.get("pool") is not None:
            pools[name] = _number(spec["pool"], f"{at}: groups.{name}.pool", integer=True)
    users: dict[str, TraceUser] = {}
    for name, spec in (cluster.get("users", {}) or {}).items():
        spec = spec or {}
        group = spec.get("group")
        if group is not None and group not in group_shares:
            raise TraceError(
                f"{at}: users.{name}.group {group!r} is not one of the groups "
                f"({', '.join(sorted(group_shares)) or 'none defined'})"
            )
        kind = spec.get("kind")
        if kind not in (None, "light", "heavy"):
            raise TraceError(f'{at}: users.{name}.kind must be "light" or "heavy" (got {kind!r})')
        users[name] = TraceUser(
            name,
            group,
            _number(spec.get("share", 1), f"{at}: users.{name}.share"),
            _number(spec.get("max_gpus"), f"{at}: users.{name}.max_gpus", allow_none=True, integer=True),
            kind,
        )
    policy = cluster.get("policy", {}) or {}

    def hours(key: str, default: float | None) -> float | None:
        value = _number(policy.get(key, default), f"{at}: policy.{key}", allow_none=True)
        return None if value is None else value * HOUR

    reclaim = ReclaimSettings(
        idle_timeout=hours("idle_timeout_h", 1.0),
        max_runtime=hours("max_runtime_h", 24.0),
        warn_before=hours("warn_before_h", 0.25) or 0.0,
        only_when_waiting=bool(policy.get("reclaim_only_when_waiting", True)),
        idle_threshold=_number(policy.get("idle_threshold", 0.05), f"{at}: policy.idle_threshold"),
    )

    sessions: list[Session] = []
    seen: dict[str, int] = {}
    for number, record in raw_sessions:
        where = f"{source}:{number}"
        session_id = str(record.get("id", f"line{number}"))
        if session_id in seen:
            raise TraceError(f"{where}: session id {session_id!r} repeats line {seen[session_id]}")
        seen[session_id] = number
        user = record.get("user")
        if not isinstance(user, str) or not user:
            raise TraceError(f"{where}: user must be a user name (got {user!r})")
        if user not in users:
            users[user] = TraceUser(user)
        asked = _number(record.get("gpus"), f"{where}: gpus", minimum=1, integer=True)
        if asked > gpus:
            raise TraceError(f"{where}: gpus {asked} is more than the cluster's {gpus}")
        phases_raw = record.get("phases")
        if not isinstance(phases_raw, list) or not phases_raw:
            raise TraceError(f'{where}: phases must be a non-empty list of ["busy"|"idle", hours]')
        phases: list[tuple[str, float]] = []
        for index, phase in enumerate(phases_raw):
            if not isinstance(phase, list) or len(phase) != 2 or phase[0] not in PHASE_KINDS:
                raise TraceError(f'{where}: phases[{index}] must be ["busy"|"idle", hours] (got {phase!r})')
            phases.append((phase[0], _number(phase[1], f"{where}: phases[{index}] hours", minimum=0) * HOUR))
        limit = _number(record.get("max_runtime_h"), f"{where}: max_runtime_h", minimum=0.01, allow_none=True)
        sessions.append(
            Session(
                session_id,
                _number(record.get("at_h"), f"{where}: at_h") * HOUR,
                user,
                asked,
                tuple(phases),
                None if limit is None else limit * HOUR,
            )
        )
    return Trace(
        gpus,
        horizon,
        half_life,
        users,
        group_shares,
        pools,
        reclaim,
        tuple(sorted(sessions, key=lambda s: (s.at, s.id))),
        str(cluster.get("name", source)),
    )


def load_trace(path: str | Path) -> Trace:
    """Read and parse a trace file (see the module docstring for the format)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise TraceError(f"{path}: cannot read the trace ({error.strerror})") from None
    return parse_trace(text, str(path))


def dump_trace(trace_header: dict[str, Any], sessions: Sequence[dict[str, Any]]) -> str:
    """JSON Lines text for a cluster header and session records (used by the generator)."""
    lines = [json.dumps({"type": "cluster", **trace_header}, sort_keys=True)]
    lines += [json.dumps({"type": "session", **s}, sort_keys=True) for s in sessions]
    return "\n".join(lines) + "\n"
