"""Virtual-clock simulator: replays a demand trace (``labgpu.fairshare.trace``) through the real
scheduling code (labgpu/fairshare/scheduler.py) under the ``fifo`` or ``fairshare`` policy and
measures waits, fairness, GPU busy fraction and reclaimed idle GPU-hours.

A session asks for GPUs at its arrival time; once started it runs its phases (busy: the GPUs
compute; idle: held but unused) and stops after the last one. A reclaimed session whose remaining
phases still hold work is asked for again when its owner returns (the end of the idle phase
it was reclaimed in), with the remaining phases.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from labgpu.fairshare import scheduler
from labgpu.fairshare.scheduler import GpuRequest, Reclaim, RunningAllocation, Warn
from labgpu.fairshare.trace import HOUR, Session, Trace, TraceError
from labgpu.gpus.allocator import choose_gpus
from labgpu.gpus.inventory import Gpu

Policy = Literal["fifo", "fairshare"]
POLICIES: tuple[Policy, ...] = ("fifo", "fairshare")


# ---------------------------------------------------------------------------------------
# GPU choice: the allocator's own, on a plain (topology-less) inventory
# ---------------------------------------------------------------------------------------


def gpu_chooser() -> Callable[[Sequence[str], int], Sequence[str]]:
    """The function that picks which free GPU ids a grant gets: labgpu.gpus.allocator.choose_gpus
    on GPUs without topology (the scheduler still decides who starts)."""

    def choose(free: Sequence[str], count: int) -> Sequence[str]:
        inventory = [
            Gpu(uuid=uuid, index=int(uuid.rsplit("-", 1)[-1]), model="sim", memory_total=80 << 30) for uuid in free
        ]
        return [gpu.uuid for gpu in choose_gpus(inventory, count)]

    return choose


# ---------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------


@dataclass
class _Running:
    allocation: RunningAllocation
    session: Session
    phase_starts: list[tuple[str, float, float]]  # (kind, start, end) absolute seconds
    ends_at: float

    def busy_at(self, now: float) -> bool:
        return any(kind == "busy" and start <= now < end for kind, start, end in self.phase_starts)

    def last_busy_before(self, now: float) -> float | None:
        last = None
        for kind, start, end in self.phase_starts:
            if kind == "busy" and start <= now and end > start:
                last = min(end, now)
        return last


@dataclass
class PolicyResult:
    """What one policy did with one trace: per-request waits and per-user GPU-hours."""

    policy: str
    waits_h: dict[str, list[float]] = field(default_factory=dict)  # user -> waits (hours)
    held_h: dict[str, float] = field(default_factory=dict)  # GPU-hours held within the horizon
    busy_h: dict[str, float] = field(default_factory=dict)  # GPU-hours busy within the horizon
    reclaimed_idle_gpu_h: float = 0.0
    reclaims: int = 0
    warnings: int = 0
    backfilled: int = 0
    grants: int = 0
    finished_at_h: float = 0.0
    unfinished: int = 0


class Simulation:
    """One policy over one trace on a virtual clock; ``run()`` returns a PolicyResult."""

    TICK = 300.0  # seconds between telemetry/reclaim checks, like the poller's rollup

    def __init__(
        self,
        trace: Trace,
        policy: Policy,
        *,
        choose: Callable[[Sequence[str], int], Sequence[str]] | None = None,
        max_time_factor: float = 6.0,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}: use one of {', '.join(POLICIES)}")
        self.trace = trace
        self.policy = policy
        self.gpu_ids = [f"GPU-sim-{i}" for i in range(trace.gpus)]
        self.choose = choose or gpu_chooser()
        self.shares = trace.shares()
        self.user_totals = {u.name: u.max_gpus for u in trace.users.values() if u.max_gpus is not None}
        self.end_limit = trace.horizon * max_time_factor
        self.now = 0.0
        self.usage: dict[str, float] = {}
        self.queue: dict[str, tuple[GpuRequest, Session]] = {}
        self.running: dict[str, _Running] = {}
        self.events: list[tuple[float, int, str, Any]] = []
        self.sequence = 0
        self.result = PolicyResult(policy)

    # -- events --------------------------------------------------------------------------
    def _push(self, when: float, kind: str, payload: Any) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (when, self.sequence, kind, payload))

    def _advance(self, when: float) -> None:
        """Move the clock, charging decayed usage and horizon-clipped GPU-hours."""
        if when <= self.now:
            return
        held_by_user: dict[str, int] = {}
        for run in self.running.values():
            user = run.allocation.user
            held_by_user[user] = held_by_user.get(user, 0) + run.allocation.gpus
            lo, hi = self.now, min(when, self.trace.horizon)
            if hi > lo:
                self.result.held_h[user] = self.result.held_h.get(user, 0.0) + run.allocation.gpus * (hi - lo) / HOUR
                busy = sum(
                    max(0.0, min(end, hi) - max(start, lo)) for kind, start, end in run.phase_starts if kind == "busy"
                )
                self.result.busy_h[user] = self.result.busy_h.get(user, 0.0) + run.allocation.gpus * busy / HOUR
        for user in set(self.usage) | set(held_by_user):
            self.usage[user] = scheduler.decayed_usage(
                self.usage.get(user, 0.0), self.now, when, self.trace.half_life, held_by_user.get(user, 0)
            )
        self.now = when

    def _submit(self, session: Session) -> None:
        user = self.trace.users[session.user]
        limit = session.max_runtime
        if self.policy == "fairshare" and limit is None:
            limit = self.trace.reclaim.max_runtime
        request = GpuRequest(
            f"{session.id}@{self.now:.0f}",
            session.user,
            session.gpus,
            self.now,
            user.group,
            limit if self.policy == "fairshare" else None,
        )
        reason = scheduler.refusal_reason(request, len(self.gpu_ids), self.trace.pools, self.user_totals)
        if reason:
            raise TraceError(f"session {session.id}: {reason}")
        self.queue[request.id] = (request, session)

    def _free_ids(self) -> list[str]:
        held = {g for run in self.running.values() for g in run.allocation.gpu_ids}
        return [g for g in self.gpu_ids if g not in held]

    def _dequeue(self) -> None:
        if not self.queue:
            return
        requests = [request for request, _ in self.queue.values()]
        ordered = scheduler.order_queue(requests, self.usage, self.shares, self.now, self.policy)
        grants = scheduler.plan_dequeue(
            ordered,
            self._free_ids(),
            [run.allocation for run in self.running.values()],
            self.now,
            self.trace.pools,
            self.user_totals,
            backfill="easy" if self.policy == "fairshare" else "first_fit",
            choose_gpus=self.choose,
        )
        for grant in grants:
            request, session = self.queue.pop(grant.request_id)
            self.result.waits_h.setdefault(request.user, []).append((self.now - request.submitted_at) / HOUR)
            self.result.grants += 1
            self.result.backfilled += grant.backfilled
            phases, clock = [], self.now
            for kind, seconds in session.phases:
                phases.append((kind, clock, clock + seconds))
                clock += seconds
            allocation = RunningAllocation(
                grant.request_id,
                request.user,
                grant.gpus,
                self.now,
                request.group,
                request.max_runtime,
                None,
                None,
                tuple(grant.gpu_ids),
            )
            self.running[grant.request_id] = _Running(allocation, session, phases, clock)
            self._push(clock, "end", grant.request_id)

    def _reclaim_check(self) -> None:
        if self.policy != "fairshare" or not self.running:
            return
        settings = self.trace.reclaim
        allocations, busy = [], {}
        for allocation_id, run in self.running.items():
            busy[allocation_id] = 1.0 if run.busy_at(self.now) else 0.0
            last = run.last_busy_before(self.now)
            allocations.append(replace(run.allocation, last_busy_at=last))
        actions = scheduler.reclaim_decisions(
            allocations,
            busy,
            self.now,
            idle_timeout=settings.idle_timeout,
            max_runtime=settings.max_runtime,
            someone_waiting=bool(self.queue),
            only_when_waiting=settings.only_when_waiting,
            warn_before=settings.warn_before,
            idle_threshold=settings.idle_threshold,
        )
        for action in actions:
            run = self.running[action.allocation_id]
            if isinstance(action, Warn):
                self.result.warnings += 1
                run.allocation = replace(run.allocation, warned_at=self.now, warned_for=action.reason)
            elif isinstance(action, Reclaim):
                self._reclaim(action.allocation_id)

    def _reclaim(self, allocation_id: str) -> None:
        run = self.running.pop(allocation_id)
        # The user would have stayed idle until the next busy phase (or the end): GPU-hours
        # handed back. Whatever work remains is asked for again when they return.
        remaining: list[tuple[str, float]] = []
        returns_at = run.ends_at
        for kind, start, end in run.phase_starts:
            if end <= self.now:
                continue
            if kind == "busy" and start >= self.now and not remaining:
                returns_at = start
            if kind == "busy" or remaining:
                remaining.append((kind, end - max(start, self.now)))
        self.result.reclaims += 1
        self.result.reclaimed_idle_gpu_h += run.allocation.gpus * (returns_at - self.now) / HOUR
        if remaining:
            rest = Session(
                f"{run.session.id}+r{self.result.reclaims}",
                returns_at,
                run.session.user,
                run.session.gpus,
                tuple(remaining),
                run.session.max_runtime,
            )
            self._push(returns_at, "arrival", rest)
        else:
            self.result.finished_at_h = max(self.result.finished_at_h, self.now / HOUR)

    def run(self) -> PolicyResult:
        for session in self.trace.sessions:
            self._push(session.at, "arrival", session)
        self._push(0.0, "tick", None)
        while self.events:
            when = self.events[0][0]
            if when > self.end_limit:
                break
            self._advance(when)
            ticked = False
            while self.events and self.events[0][0] == when:
                _, _, kind, payload = heapq.heappop(self.events)
                if kind == "arrival":
                    self._submit(payload)
                elif kind == "end":
                    if payload in self.running:
                        self.running.pop(payload)
                        self.result.finished_at_h = max(self.result.finished_at_h, when / HOUR)
                elif kind == "tick":
                    ticked = True
            if ticked:
                self._reclaim_check()
                # Ticks run through the horizon, then while anything still waits or runs.
                if when + self.TICK <= self.trace.horizon or self.queue or self.running:
                    self._push(when + self.TICK, "tick", None)
            self._dequeue()
        self.result.unfinished = len(self.queue) + len(self.running)
        for request, _ in self.queue.values():
            self.result.waits_h.setdefault(request.user, []).append((self.now - request.submitted_at) / HOUR)
        return self.result


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile (``fraction`` in 0..1) of ``values``; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 when all equal, 1/n when one has all."""
    squares = sum(v * v for v in values)
    if not values or squares == 0:
        return 1.0
    return sum(values) ** 2 / (len(values) * squares)


def weighted_max_min(capacity: float, demand: dict[str, float], weights: dict[str, float]) -> dict[str, float]:
    """Water-filling: each user's entitlement out of ``capacity`` in proportion to ``weights``,
    never more than their ``demand``; what a capped user leaves is shared by the others."""
    entitled = {user: 0.0 for user in demand}
    open_users = {u for u, d in demand.items() if d > 0 and weights.get(u, 0) > 0}
    remaining = capacity
    while open_users and remaining > 1e-9:
        level = remaining / sum(weights[u] for u in open_users)
        capped = {u for u in open_users if demand[u] - entitled[u] <= level * weights[u]}
        if not capped:
            for user in open_users:
                entitled[user] += level * weights[user]
            break
        for user in capped:
            remaining -= demand[user] - entitled[user]
            entitled[user] = demand[user]
        open_users -= capped
    return entitled


def busy_demand_within_horizon(trace: Trace) -> dict[str, float]:
    """GPU-hours of work each user would get done inside the horizon if every session
    started the moment it was asked for (the most anyone could have served them)."""
    demand: dict[str, float] = {}
    for session in trace.sessions:
        clock = session.at
        for kind, seconds in session.phases:
            if kind == "busy":
                inside = max(0.0, min(clock + seconds, trace.horizon) - clock)
                demand[session.user] = demand.get(session.user, 0.0) + session.gpus * inside / HOUR
            clock += seconds
    return demand


def user_kinds(trace: Trace) -> dict[str, str]:
    """light/heavy per user: as labelled in the trace, else by demand below/above the median."""
    demand: dict[str, float] = {}
    for session in trace.sessions:
        demand[session.user] = demand.get(session.user, 0.0) + session.gpus * sum(s for _, s in session.phases)
    ordered = sorted(demand.values())
    median = percentile(ordered, 0.5)
    return {user: trace.users[user].kind or ("heavy" if demand[user] > median else "light") for user in demand}


def summarize(trace: Trace, result: PolicyResult) -> dict[str, Any]:
    """The figures an admin compares: waits (hours), Jain's index, busy fraction, reclaims."""
    kinds = user_kinds(trace)
    normalized_share = scheduler.normalized_shares(trace.shares(), trace.users)
    all_waits = [w for waits in result.waits_h.values() for w in waits]
    light_waits = [w for user, waits in result.waits_h.items() if kinds.get(user) == "light" for w in waits]
    heavy_waits = [w for user, waits in result.waits_h.items() if kinds.get(user) == "heavy" for w in waits]
    submitters = sorted(kinds)
    # Fairness: work served relative to the weighted max-min fair entitlement (shares,
    # capped by what each user asked for); see docs/fairshare.md for why not raw GPU-hours.
    demand = busy_demand_within_horizon(trace)
    entitled = weighted_max_min(trace.gpus * trace.horizon / HOUR, demand, normalized_share)
    jain = jain_index([result.busy_h.get(u, 0.0) / entitled[u] for u in submitters if entitled.get(u, 0) > 0])
    jain_held = jain_index(
        [result.held_h.get(u, 0.0) / normalized_share[u] for u in submitters if normalized_share[u] > 0]
    )
    jain_busy = jain_index(
        [result.busy_h.get(u, 0.0) / normalized_share[u] for u in submitters if normalized_share[u] > 0]
    )
    capacity_h = trace.gpus * trace.horizon / HOUR
    busy_total = sum(result.busy_h.values())
    held_total = sum(result.held_h.values())
    return {
        "policy": result.policy,
        "requests": len(all_waits),
        "mean_wait_h": sum(all_waits) / len(all_waits) if all_waits else 0.0,
        "p95_wait_h": percentile(all_waits, 0.95),
        "light_mean_wait_h": sum(light_waits) / len(light_waits) if light_waits else 0.0,
        "light_p95_wait_h": percentile(light_waits, 0.95),
        "heavy_mean_wait_h": sum(heavy_waits) / len(heavy_waits) if heavy_waits else 0.0,
        "heavy_p95_wait_h": percentile(heavy_waits, 0.95),
        "jain_index": jain,
        "jain_index_held_per_share": jain_held,
        "jain_index_busy_per_share": jain_busy,
        "gpu_busy_fraction": busy_total / capacity_h if capacity_h else 0.0,
        "gpu_held_fraction": held_total / capacity_h if capacity_h else 0.0,
        "idle_gpu_h_reclaimed": result.reclaimed_idle_gpu_h,
        "reclaims": result.reclaims,
        "warnings": result.warnings,
        "backfilled_starts": result.backfilled,
        "finished_at_h": result.finished_at_h,
        "unfinished": result.unfinished,
        "held_gpu_h_by_user": {u: round(result.held_h.get(u, 0.0), 3) for u in submitters},
        "busy_gpu_h_by_user": {u: round(result.busy_h.get(u, 0.0), 3) for u in submitters},
        "busy_demand_gpu_h_by_user": {u: round(demand.get(u, 0.0), 3) for u in submitters},
        "entitled_gpu_h_by_user": {u: round(entitled.get(u, 0.0), 3) for u in submitters},
        "user_kinds": kinds,
    }


def simulate(trace: Trace, policy: Policy, *, gpus: int | None = None) -> dict[str, Any]:
    """Run one policy over ``trace`` and return its summary (see ``summarize``)."""
    if gpus is not None:
        trace = replace(trace, gpus=gpus)
        too_big = [s for s in trace.sessions if s.gpus > gpus]
        if too_big:
            raise TraceError(f"session {too_big[0].id} asks for {too_big[0].gpus} GPUs, more than --gpus {gpus}")
    return summarize(trace, Simulation(trace, policy).run())


TABLE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("requests", "requests", "{:.0f}"),
    ("mean wait (h)", "mean_wait_h", "{:.2f}"),
    ("p95 wait (h)", "p95_wait_h", "{:.2f}"),
    ("light users: mean wait (h)", "light_mean_wait_h", "{:.2f}"),
    ("light users: p95 wait (h)", "light_p95_wait_h", "{:.2f}"),
    ("heavy users: mean wait (h)", "heavy_mean_wait_h", "{:.2f}"),
    ("heavy users: p95 wait (h)", "heavy_p95_wait_h", "{:.2f}"),
    ("Jain's index (served / fair entitlement)", "jain_index", "{:.3f}"),
    ("Jain's index, raw held GPU-h / share", "jain_index_held_per_share", "{:.3f}"),
    ("Jain's index, raw busy GPU-h / share", "jain_index_busy_per_share", "{:.3f}"),
    ("GPU busy fraction", "gpu_busy_fraction", "{:.3f}"),
    ("GPU held fraction", "gpu_held_fraction", "{:.3f}"),
    ("idle GPU-h reclaimed", "idle_gpu_h_reclaimed", "{:.1f}"),
    ("reclaims", "reclaims", "{:.0f}"),
    ("backfilled starts", "backfilled_starts", "{:.0f}"),
    ("last session ends (h)", "finished_at_h", "{:.1f}"),
)


def format_table(summaries: Sequence[dict[str, Any]], *, markdown: bool = False) -> str:
    """A side-by-side table of policy summaries (plain text, or Markdown for results files)."""
    headers = ["metric"] + [s["policy"] for s in summaries]
    rows = [[label] + [fmt.format(s[key]) for s in summaries] for label, key, fmt in TABLE_ROWS]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * len(summaries)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(headers))]
    lines += [
        "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)) for row in rows
    ]
    return "\n".join(lines)
