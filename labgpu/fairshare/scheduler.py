"""Fair-share scheduling core: usage decay, fair-share priority, queue order, EASY backfill,
idle/max-runtime reclamation decisions and wait estimates.

Pure: plain data in, plain data out, time passed in as seconds (any epoch). The hub, the
ledger and the simulator (labgpu/fairshare/simulator.py) all call these same functions; the formulas
are documented in docs/fairshare.md.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from labgpu.units import format_minutes, gpus_text, plural

SchedulingPolicy = Literal["fairshare", "fifo"]
BackfillMode = Literal["easy", "first_fit"]
ReclaimReason = Literal["idle", "max_runtime"]

INFINITY = math.inf
UNGROUPED = "(no group)"


# ---------------------------------------------------------------------------------------
# Plain data
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuClaim:
    """GPUs a user waits for or holds: the request's or allocation's id, who, how many."""

    id: str
    user: str
    gpus: int


@dataclass(frozen=True)
class GpuRequest(GpuClaim):
    """A spawn waiting in the queue: who asks for how many GPUs, since when.

    ``max_runtime`` (seconds, from the user's policy or chosen on the spawn page) bounds how
    long the server may hold its GPUs; backfill relies on it, None means unbounded.
    """

    submitted_at: float
    group: str | None = None
    max_runtime: float | None = None


@dataclass(frozen=True)
class RunningAllocation(GpuClaim):
    """GPUs held by a running server, with what reclamation needs to know about it.

    ``last_busy_at`` is the last time telemetry saw any of its GPUs above the idle threshold
    (None: never busy since start); ``warned_at`` is when its owner was last warned, and
    ``warned_for`` which rule that warning was for (None: not known, counted as idle).
    """

    started_at: float
    group: str | None = None
    max_runtime: float | None = None
    last_busy_at: float | None = None
    warned_at: float | None = None
    gpu_ids: tuple[str, ...] = ()
    warned_for: ReclaimReason | None = None

    @property
    def expected_end(self) -> float:
        """When the allocation must end at the latest (infinity without a max runtime)."""
        if self.max_runtime is None:
            return INFINITY
        return self.started_at + self.max_runtime


@dataclass(frozen=True)
class Shares:
    """Fair-share weights: each user's share within their group and each group's share.

    Users missing from ``users`` get ``default_user_share``; users missing from ``group_of``
    are charged to one pseudo-group (``UNGROUPED``) with ``default_group_share``.
    """

    users: Mapping[str, float] = field(default_factory=dict)
    group_of: Mapping[str, str] = field(default_factory=dict)
    groups: Mapping[str, float] = field(default_factory=dict)
    default_user_share: float = 1.0
    default_group_share: float = 1.0

    def user_share(self, user: str) -> float:
        return float(self.users.get(user, self.default_user_share))

    def group(self, user: str) -> str:
        return self.group_of.get(user) or UNGROUPED

    def group_share(self, group: str) -> float:
        return float(self.groups.get(group, self.default_group_share))


@dataclass(frozen=True)
class Grant:
    """A decision to start a queued request now, on these GPUs (ids when ids were given)."""

    request_id: str
    user: str
    gpus: int
    gpu_ids: tuple[str, ...] = ()
    backfilled: bool = False


@dataclass(frozen=True)
class Warn:
    """Tell the owner their server will be stopped at ``reclaim_at`` unless its GPUs get busy."""

    allocation_id: str
    user: str
    reason: ReclaimReason
    reclaim_at: float
    message: str


@dataclass(frozen=True)
class Reclaim:
    """Stop the server and free its GPUs now (its owner was warned)."""

    allocation_id: str
    user: str
    reason: ReclaimReason
    gpus: int
    idle_for: float
    message: str


@dataclass(frozen=True)
class WaitEstimate:
    """What the spawn page shows a waiting user.

    ``earliest_start`` is None when the wait cannot be bounded (GPUs held without a limit).
    """

    position: int
    ahead: int
    waiting_for: str
    earliest_start: float | None
    estimated_wait: float | None


# ---------------------------------------------------------------------------------------
# Usage and fair-share priority
# ---------------------------------------------------------------------------------------


def decayed_usage(previous_usage: float, since: float, now: float, half_life: float, gpus_held: float = 0.0) -> float:
    """Usage (GPU-seconds) at ``now``: ``previous_usage`` measured at ``since`` decayed with
    ``half_life``, plus ``gpus_held`` GPUs held throughout the interval, each instant decayed
    by its own age (exact integral, so the result does not depend on how often it is called).
    """
    if half_life <= 0:
        raise ValueError(f"half_life must be > 0 seconds (got {half_life})")
    elapsed = now - since
    if elapsed < 0:
        raise ValueError(f"now ({now}) is before since ({since})")
    decay = math.pow(2.0, -elapsed / half_life)
    accrued = gpus_held * half_life / math.log(2) * (1.0 - decay)
    return previous_usage * decay + accrued


def usage_from_intervals(intervals: Iterable[tuple[float, float | None, float]], now: float, half_life: float) -> float:
    """Decayed usage at ``now`` from (start, end or None while running, gpus) holdings,
    as the ledger would list a user's allocations."""
    total = 0.0
    for start, end, gpus in intervals:
        stop = now if end is None else min(end, now)
        if stop <= start:
            continue
        # Usage accrued over [start, stop], then decayed from stop to now.
        held = decayed_usage(0.0, start, stop, half_life, gpus)
        total += decayed_usage(held, stop, now, half_life)
    return total


def fairshare_factor(usage: float, share: float, total_usage: float, total_shares: float) -> float:
    """Slurm's classic fair-share factor F = 2^(-U/S), U = usage/total_usage and
    S = share/total_shares: 1.0 for no usage, 0.5 for exactly one's share, toward 0 above it."""
    if share <= 0 or total_shares <= 0:
        return 0.0
    if total_usage <= 0:
        return 1.0
    normalized_usage = usage / total_usage
    normalized_share = share / total_shares
    return math.pow(2.0, -normalized_usage / normalized_share)


def normalized_shares(shares: Shares, users: Iterable[str]) -> dict[str, float]:
    """Each user's fraction of the whole machine: (group share / sum of group shares) x
    (user share / sum of user shares in the group), over the groups of ``users``."""
    members: dict[str, list[str]] = {}
    for user in set(users):
        members.setdefault(shares.group(user), []).append(user)
    total_group_shares = sum(shares.group_share(g) for g in members)
    fractions: dict[str, float] = {}
    for group, group_users in members.items():
        sibling_shares = sum(shares.user_share(u) for u in group_users)
        for user in group_users:
            if total_group_shares <= 0 or sibling_shares <= 0:
                fractions[user] = 0.0
            else:
                fractions[user] = (
                    shares.group_share(group) / total_group_shares * shares.user_share(user) / sibling_shares
                )
    return fractions


def fairshare_factors(usage: Mapping[str, float], shares: Shares, users: Iterable[str] = ()) -> dict[str, float]:
    """Two-level fair-share factor for every user with usage, a share, or listed in ``users``.

    S = (group share / sum of group shares) x (user share / sum of user shares in the group);
    UE = U_user + (U_group - U_user) x (user share / sum of user shares in the group)
    (Slurm's classic effective usage, so a user of a group that used a lot inherits part of
    it); F = 2^(-UE/S). Usages are normalized by the total over all users.
    """
    everyone = set(usage) | set(shares.users) | set(shares.group_of) | set(users)
    total_usage = sum(max(0.0, usage.get(u, 0.0)) for u in everyone)
    members: dict[str, list[str]] = {}
    for user in everyone:
        members.setdefault(shares.group(user), []).append(user)
    total_group_shares = sum(shares.group_share(g) for g in members)
    factors: dict[str, float] = {}
    for group, group_users in members.items():
        group_usage = sum(max(0.0, usage.get(u, 0.0)) for u in group_users)
        sibling_shares = sum(shares.user_share(u) for u in group_users)
        group_fraction = shares.group_share(group) / total_group_shares if total_group_shares > 0 else 0.0
        for user in group_users:
            in_group = shares.user_share(user) / sibling_shares if sibling_shares > 0 else 0.0
            normalized_share = group_fraction * in_group
            if normalized_share <= 0:
                factors[user] = 0.0
                continue
            if total_usage <= 0:
                factors[user] = 1.0
                continue
            own = max(0.0, usage.get(user, 0.0)) / total_usage
            effective = own + (group_usage / total_usage - own) * in_group
            factors[user] = math.pow(2.0, -effective / normalized_share)
    return factors


def order_queue(
    requests: Sequence[GpuRequest],
    usage: Mapping[str, float],
    shares: Shares | Mapping[str, float],
    now: float,
    policy: SchedulingPolicy = "fairshare",
    *,
    age_weight: float = 0.1,
    age_saturation: float = 86400.0,
) -> list[GpuRequest]:
    """Queue in the order requests should be considered.

    ``fifo``: by submission time. ``fairshare``: by priority = F + age_weight x
    min(1, waited / age_saturation), highest first, so a user far over their share still
    rises after a day of waiting; ties go to the earlier request.
    """
    by_arrival = sorted(requests, key=lambda r: (r.submitted_at, r.id))
    if policy == "fifo":
        return by_arrival
    if policy != "fairshare":
        raise ValueError(f"unknown scheduling policy {policy!r}: use 'fairshare' or 'fifo'")
    if isinstance(shares, Shares):
        share_tree = shares
    else:
        # Flat user shares: charge users to the group named on their requests, if any.
        share_tree = Shares(users=dict(shares), group_of={r.user: r.group for r in requests if r.group})
    factors = fairshare_factors(usage, share_tree, (r.user for r in requests))

    def priority(request: GpuRequest) -> float:
        waited = max(0.0, now - request.submitted_at)
        age = min(1.0, waited / age_saturation) if age_saturation > 0 else 1.0
        return factors.get(request.user, 0.0) + age_weight * age

    return sorted(by_arrival, key=lambda r: (-priority(r), r.submitted_at, r.id))


# ---------------------------------------------------------------------------------------
# Dequeue with limits and EASY backfill
# ---------------------------------------------------------------------------------------


def first_gpus(free: Sequence[str], count: int) -> tuple[str, ...]:
    """Default GPU choice for grants: the first ``count`` free ids (the hub passes the
    allocator's topology-aware choice instead)."""
    return tuple(free[:count])


def refusal_reason(
    request: GpuRequest, total_gpus: int, pools: Mapping[str, int], user_totals: Mapping[str, int]
) -> str | None:
    """Why ``request`` can never start (so it must be refused, not queued), or None."""
    if request.gpus > total_gpus:
        return (
            f"{request.user} asked for {request.gpus} GPUs but this server has {total_gpus}; "
            f"ask for at most {total_gpus}."
        )
    if request.group is not None and request.group in pools and request.gpus > pools[request.group]:
        return (
            f"{request.user} asked for {request.gpus} GPUs but group {request.group}'s pool is "
            f"{pools[request.group]}; ask for at most {pools[request.group]}."
        )
    if request.user in user_totals and request.gpus > user_totals[request.user]:
        return (
            f"{request.user} asked for {request.gpus} GPUs but may hold at most {user_totals[request.user]} in total."
        )
    return None


def _limit_blocked(
    request: GpuRequest,
    group_held: Mapping[str, int],
    user_held: Mapping[str, int],
    pools: Mapping[str, int],
    user_totals: Mapping[str, int],
    extra: int = 0,
) -> bool:
    """Would granting ``request`` (plus ``extra`` GPUs) exceed its group's pool or its user's total?"""
    asked = request.gpus + extra
    group = request.group
    over_pool = group is not None and group in pools and group_held.get(group, 0) + asked > pools[group]
    over_total = request.user in user_totals and user_held.get(request.user, 0) + asked > user_totals[request.user]
    return over_pool or over_total


def _shadow(needed: int, free_now: int, running: Iterable[tuple[float, int]], now: float) -> tuple[float, int]:
    """EASY reservation for the blocked head: the earliest time ``needed`` GPUs are free if
    every running allocation ends at its expected end, and how many spare GPUs remain then."""
    available = free_now
    if available >= needed:
        return now, available - needed
    ends = sorted((max(end, now), gpus) for end, gpus in running)
    shadow = INFINITY
    for end, gpus in ends:
        if available >= needed and end > shadow:
            break
        available += gpus
        if available >= needed and shadow == INFINITY:
            shadow = end
    if available < needed:
        return INFINITY, 0
    return shadow, available - needed


def plan_dequeue(
    queue: Sequence[GpuRequest],
    free_gpus: int | Sequence[str],
    holdings: Sequence[RunningAllocation],
    now: float,
    pools: Mapping[str, int] | None = None,
    user_totals: Mapping[str, int] | None = None,
    *,
    backfill: BackfillMode = "easy",
    choose_gpus: Callable[[Sequence[str], int], Sequence[str]] = first_gpus,
) -> list[Grant]:
    """Which queued requests (in ``queue`` order) start now.

    Group ``pools`` (GPUs a group may hold at once) and ``user_totals`` (GPUs a user may hold
    at once) are respected. ``easy``: the first request that does not fit the free GPUs gets
    a reservation at its earliest start (from the holdings' expected ends); a later request
    starts only if it fits now and ends before that time or uses GPUs spare at it, so it
    cannot delay the head. ``first_fit`` (today's JupyterHub): whatever fits starts.
    Requests blocked by their own group or user limit never hold a reservation.
    """
    pools = pools or {}
    user_totals = user_totals or {}
    free_ids: list[str] | None = None
    if isinstance(free_gpus, int):
        free_count = free_gpus
    else:
        free_ids = list(free_gpus)
        free_count = len(free_ids)
    total_gpus = free_count + sum(a.gpus for a in holdings)
    group_held: dict[str, int] = {}
    user_held: dict[str, int] = {}
    for allocation in holdings:
        if allocation.group is not None:
            group_held[allocation.group] = group_held.get(allocation.group, 0) + allocation.gpus
        user_held[allocation.user] = user_held.get(allocation.user, 0) + allocation.gpus
    running_ends = [(a.expected_end, a.gpus) for a in holdings]

    grants: list[Grant] = []
    head: GpuRequest | None = None
    shadow_time = INFINITY
    spare_at_shadow = 0
    for request in queue:
        if request.gpus <= 0 or refusal_reason(request, total_gpus, pools, user_totals):
            continue
        if _limit_blocked(request, group_held, user_held, pools, user_totals):
            continue
        fits_now = request.gpus <= free_count
        backfilled = False
        if head is not None:
            if not fits_now:
                continue
            ends_at = now + request.max_runtime if request.max_runtime is not None else INFINITY
            if ends_at > shadow_time or ends_at == INFINITY:
                # It would still hold GPUs when the head should start: only spare GPUs may be
                # used, and it must leave room for the head under shared limits.
                if request.gpus > spare_at_shadow:
                    continue
                shares_limit = request.user == head.user or (request.group is not None and request.group == head.group)
                if shares_limit and _limit_blocked(head, group_held, user_held, pools, user_totals, extra=request.gpus):
                    continue
                spare_at_shadow -= request.gpus
            backfilled = True
        elif not fits_now:
            if backfill == "easy":
                head = request
                shadow_time, spare_at_shadow = _shadow(request.gpus, free_count, running_ends, now)
            continue
        ids: tuple[str, ...] = ()
        if free_ids is not None:
            ids = tuple(choose_gpus(free_ids, request.gpus))
            if len(ids) != request.gpus or not set(ids) <= set(free_ids):
                raise ValueError(f"GPU choice for {request.id} returned {ids!r}, not {request.gpus} free GPUs")
            free_ids = [g for g in free_ids if g not in ids]
        free_count -= request.gpus
        if request.group is not None:
            group_held[request.group] = group_held.get(request.group, 0) + request.gpus
        user_held[request.user] = user_held.get(request.user, 0) + request.gpus
        ends_at = now + request.max_runtime if request.max_runtime is not None else INFINITY
        running_ends.append((ends_at, request.gpus))
        grants.append(Grant(request.id, request.user, request.gpus, ids, backfilled))
    return grants


# ---------------------------------------------------------------------------------------
# Reclamation
# ---------------------------------------------------------------------------------------


def reclaim_decisions(
    allocations: Sequence[RunningAllocation],
    busy_fraction_by_allocation: Mapping[str, float],
    now: float,
    *,
    idle_timeout: float | None,
    max_runtime: float | None = None,
    someone_waiting: bool = False,
    only_when_waiting: bool = True,
    warn_before: float = 900.0,
    idle_threshold: float = 0.05,
) -> list[Warn | Reclaim]:
    """Warnings and reclamations due at ``now``.

    Runtime rule, a limit: a server holds its GPUs at most its max runtime (the allocation's
    own, else ``max_runtime``), busy or idle, whether or not anyone waits. It is warned
    ``warn_before`` ahead and stopped at the limit, or ``warn_before`` after the warning if
    that came later (a reclaimer that was down does not stop anyone unwarned).

    Idle rule: idle for ``idle_timeout`` (since ``last_busy_at`` or the start). An allocation
    whose latest busy fraction (``busy_fraction_by_allocation``, 0..1) is at or above
    ``idle_threshold``, or that has no measurement at all, is busy and never idle. It is warned
    ahead and reclaimed once a warning given while it was already idle is ``warn_before`` old.
    With ``only_when_waiting`` the idle rule applies only while ``someone_waiting``.

    Once the runtime rule's warning is due it decides (an idle reclaim already due still
    happens first); the owner is never told two different stop times.
    """
    idle_rule_applies = someone_waiting or not only_when_waiting
    actions: list[Warn | Reclaim] = []
    for allocation in allocations:
        busy_fraction = busy_fraction_by_allocation.get(allocation.id)
        busy_now = busy_fraction is None or busy_fraction >= idle_threshold
        idle_since = allocation.started_at if allocation.last_busy_at is None else allocation.last_busy_at
        idle_for = 0.0 if busy_now else max(0.0, now - idle_since)
        idle = (
            _idle_action(allocation, now, idle_timeout, busy_now, idle_since, idle_for, someone_waiting, warn_before)
            if idle_rule_applies
            else None
        )
        limit = allocation.max_runtime if allocation.max_runtime is not None else max_runtime
        if limit is not None and now >= allocation.started_at + limit - warn_before and not isinstance(idle, Reclaim):
            runtime = _runtime_action(allocation, now, limit, idle_for, warn_before)
            if runtime is not None:
                actions.append(runtime)
        elif idle is not None:
            actions.append(idle)
    return actions


def _runtime_action(
    allocation: RunningAllocation, now: float, limit: float, idle_for: float, warn_before: float
) -> Warn | Reclaim | None:
    """The runtime rule for a server within ``warn_before`` of its limit (or past it)."""
    due_at = allocation.started_at + limit
    ran_for = now - allocation.started_at
    warned_at = allocation.warned_at if allocation.warned_for == "max_runtime" else None
    if warned_at is None or warned_at < allocation.started_at:
        reclaim_at = max(due_at, now + warn_before)
        return Warn(
            allocation.id,
            allocation.user,
            "max_runtime",
            reclaim_at,
            f"Your server will be stopped in {format_minutes(reclaim_at - now)}: it has run "
            f"{format_minutes(ran_for)} of its {format_minutes(limit)} limit, busy or not. "
            "Save your work; your home is kept.",
        )
    if now < max(due_at, warned_at + warn_before):
        return None
    return Reclaim(
        allocation.id,
        allocation.user,
        "max_runtime",
        allocation.gpus,
        idle_for,
        f"Stopped {allocation.user}'s server: it ran {format_minutes(ran_for)}, its limit is {format_minutes(limit)}.",
    )


def _idle_action(
    allocation: RunningAllocation,
    now: float,
    idle_timeout: float | None,
    busy_now: bool,
    idle_since: float,
    idle_for: float,
    someone_waiting: bool,
    warn_before: float,
) -> Warn | Reclaim | None:
    """The idle rule: warn ahead, reclaim once a warning given while idle is old enough."""
    if idle_timeout is None or busy_now or now < idle_since + idle_timeout - warn_before:
        return None
    due_at = idle_since + idle_timeout
    # A warning counts only if it was an idle warning and the GPUs have not been busy since.
    warned_at = allocation.warned_at if allocation.warned_for in (None, "idle") else None
    if warned_at is not None and warned_at >= idle_since:  # warned, and not busy since
        if now < due_at or now - warned_at < warn_before:
            return None
        return Reclaim(
            allocation.id,
            allocation.user,
            "idle",
            allocation.gpus,
            idle_for,
            f"Stopped {allocation.user}'s server: its {gpus_text(allocation.gpus)} were idle "
            f"for {format_minutes(idle_for)}" + ("; others are waiting." if someone_waiting else "."),
        )
    reclaim_at = max(due_at, now + warn_before)
    return Warn(
        allocation.id,
        allocation.user,
        "idle",
        reclaim_at,
        f"Your server will be stopped in {format_minutes(reclaim_at - now)} because its GPUs have been idle "
        f"for {format_minutes(idle_for)}. Use the GPUs (or save your work) to keep it.",
    )


# ---------------------------------------------------------------------------------------
# Wait estimate for the spawn page
# ---------------------------------------------------------------------------------------


def estimate_wait(
    request_id: str, queue: Sequence[GpuRequest], free_gpus: int, holdings: Sequence[RunningAllocation], now: float
) -> WaitEstimate:
    """Position and earliest start of ``request_id`` in the ordered ``queue``: requests are
    started in queue order as GPUs free up, every server holding its GPUs until its max
    runtime (an upper bound: servers stopped early or reclaimed make the wait shorter)."""
    position = next((i for i, r in enumerate(queue) if r.id == request_id), None)
    if position is None:
        raise KeyError(f"request {request_id!r} is not in the queue")
    request = queue[position]
    releases = [(max(a.expected_end, now), a.gpus) for a in holdings]
    heapq.heapify(releases)
    clock = now
    free = free_gpus
    for queued in queue[: position + 1]:
        while free < queued.gpus and releases and releases[0][0] < INFINITY:
            clock, gpus = heapq.heappop(releases)
            free += gpus
        if free < queued.gpus:
            clock = INFINITY
            break
        free -= queued.gpus
        runtime = queued.max_runtime if queued.max_runtime is not None else INFINITY
        heapq.heappush(releases, (clock + runtime, queued.gpus))
    waiting_for = f"{gpus_text(request.gpus)} ({free_gpus} free now, {plural(position, 'request')} ahead)"
    if clock == INFINITY:
        return WaitEstimate(position + 1, position, waiting_for, None, None)
    return WaitEstimate(position + 1, position, waiting_for, clock, clock - now)
