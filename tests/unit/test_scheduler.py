"""Fair-share priority math, queue order, EASY backfill, reclamation and wait estimates."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labgpu.fairshare.scheduler import (
    GpuRequest,
    Reclaim,
    RunningAllocation,
    Shares,
    Warn,
    decayed_usage,
    estimate_wait,
    fairshare_factor,
    fairshare_factors,
    order_queue,
    plan_dequeue,
    reclaim_decisions,
    refusal_reason,
    usage_from_intervals,
)

H = 3600.0
DAY = 24 * H


# --- usage decay ------------------------------------------------------------------------


def test_usage_halves_after_one_half_life():
    assert decayed_usage(100.0, 0.0, 7 * DAY, 7 * DAY) == pytest.approx(50.0)


def test_holding_gpus_accrues_gpu_seconds_when_half_life_is_long():
    # 2 GPUs for one hour with a very long half-life is ~7200 GPU-seconds.
    assert decayed_usage(0.0, 0.0, H, 1e12, gpus_held=2) == pytest.approx(7200.0, rel=1e-6)


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1e6), st.lists(st.floats(1, 5 * DAY), min_size=1, max_size=6), st.integers(0, 8))
def test_usage_does_not_depend_on_how_often_the_hub_updates_it(start_usage, steps, gpus):
    half_life = 3 * DAY
    once = decayed_usage(start_usage, 0.0, sum(steps), half_life, gpus)
    clock, usage = 0.0, start_usage
    for step in steps:
        usage = decayed_usage(usage, clock, clock + step, half_life, gpus)
        clock += step
    assert usage == pytest.approx(once, rel=1e-9, abs=1e-6)


def test_usage_from_ledger_intervals_matches_incremental_updates():
    # alice held 4 GPUs from day 0 to day 1, and 1 GPU from day 2 until now (day 3).
    half_life = 7 * DAY
    from_intervals = usage_from_intervals([(0, DAY, 4), (2 * DAY, None, 1)], 3 * DAY, half_life)
    step = decayed_usage(0, 0, DAY, half_life, 4)
    step = decayed_usage(step, DAY, 2 * DAY, half_life, 0)
    step = decayed_usage(step, 2 * DAY, 3 * DAY, half_life, 1)
    assert from_intervals == pytest.approx(step)


def test_decay_rejects_time_running_backwards():
    with pytest.raises(ValueError, match="before"):
        decayed_usage(1.0, 10.0, 5.0, DAY)


# --- fair-share factor ------------------------------------------------------------------


def test_factor_is_one_without_usage_and_one_half_at_exactly_ones_share():
    assert fairshare_factor(0, 1, 100, 4) == 1.0
    assert fairshare_factor(25, 1, 100, 4) == pytest.approx(0.5)
    assert fairshare_factor(50, 1, 100, 4) == pytest.approx(0.25)
    assert fairshare_factor(10, 0, 100, 4) == 0.0


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1e6), st.floats(0, 1e6), st.floats(0.1, 10), st.floats(1e3, 1e7))
def test_more_usage_never_raises_priority(usage_a, usage_b, share, total):
    low, high = sorted((usage_a, usage_b))
    assert fairshare_factor(low, share, total, 10) >= fairshare_factor(high, share, total, 10)


def test_group_usage_is_inherited_by_its_members():
    # ava (vision) used everything; ben is in her group, fay in another: fay ranks above ben,
    # and ben above ava.
    shares = Shares(group_of={"ava": "vision", "ben": "vision", "fay": "nlp", "gus": "nlp"})
    factors = fairshare_factors({"ava": 1000.0}, shares)
    assert factors["fay"] == factors["gus"] == 1.0
    assert factors["ava"] < factors["ben"] < factors["fay"]


def test_a_bigger_share_tolerates_more_usage():
    # Groups with shares 3:1 that used 3:1 rank equally; within a group, for equal usage the
    # user with the bigger share ranks higher.
    shares = Shares(group_of={"ava": "big", "ben": "small"}, groups={"big": 3, "small": 1})
    factors = fairshare_factors({"ava": 300.0, "ben": 100.0}, shares)
    assert factors["ava"] == pytest.approx(factors["ben"]) == pytest.approx(0.5)
    same_group = Shares(users={"ava": 3, "ben": 1}, group_of={"ava": "lab", "ben": "lab"})
    factors = fairshare_factors({"ava": 100.0, "ben": 100.0}, same_group)
    assert factors["ava"] > factors["ben"]


# --- queue order ------------------------------------------------------------------------


def test_fifo_orders_by_arrival_and_fairshare_puts_the_light_user_first():
    requests = [
        GpuRequest("r1", "heavy", 2, 0.0),
        GpuRequest("r2", "heavy", 2, 10.0),
        GpuRequest("r3", "light", 1, 20.0),
    ]
    usage = {"heavy": 100 * H, "light": 1 * H}
    assert [r.id for r in order_queue(requests, usage, {}, 30.0, "fifo")] == ["r1", "r2", "r3"]
    assert [r.id for r in order_queue(requests, usage, {}, 30.0, "fairshare")] == ["r3", "r1", "r2"]


def test_long_waiting_heavy_user_eventually_rises_above_a_newcomer_with_some_usage():
    requests = [GpuRequest("old", "heavy", 1, 0.0), GpuRequest("new", "medium", 1, 2 * DAY)]
    usage = {"heavy": 100 * H, "medium": 40 * H, "other": 60 * H}
    ordered = order_queue(requests, usage, {}, 2 * DAY, "fairshare", age_weight=1.0)
    assert ordered[0].id == "old"


def test_unknown_policy_is_refused_with_the_allowed_names():
    with pytest.raises(ValueError, match=r"fairshare.*fifo"):
        order_queue([], {}, {}, 0.0, "lottery")  # type: ignore[arg-type]


# --- dequeue and backfill ---------------------------------------------------------------


def running(id, user, gpus, started=0.0, max_runtime=None, group=None, **kw):
    return RunningAllocation(id, user, gpus, started, group, max_runtime, **kw)


def test_requests_that_fit_start_and_get_distinct_free_gpus():
    queue = [GpuRequest("a", "ava", 2, 0), GpuRequest("b", "ben", 1, 1)]
    grants = plan_dequeue(queue, ["GPU-0", "GPU-1", "GPU-2"], [], now=5)
    assert [(g.request_id, g.gpu_ids) for g in grants] == [("a", ("GPU-0", "GPU-1")), ("b", ("GPU-2",))]


def test_group_pool_and_user_total_hold_back_a_request_but_not_others():
    holdings = [running("x", "ava", 3, group="vision")]
    queue = [
        GpuRequest("a", "ava", 2, 0, "vision"),  # ava may hold 4: blocked
        GpuRequest("b", "ben", 2, 1, "vision"),  # vision pool 4: 3 + 2 > 4, blocked
        GpuRequest("c", "fay", 2, 2, "nlp"),
    ]
    grants = plan_dequeue(queue, 5, holdings, now=10, pools={"vision": 4}, user_totals={"ava": 4})
    assert [g.request_id for g in grants] == ["c"]


def test_small_request_backfills_only_when_it_ends_before_the_head_can_start():
    # 8 GPUs: 6 held until t=10h, 2 free. Head wants 4: earliest start t=10h.
    holdings = [running("x", "ava", 6, 0, 10 * H)]
    head = GpuRequest("head", "eli", 4, 0, max_runtime=24 * H)
    short = GpuRequest("short", "ben", 2, 1, max_runtime=2 * H)
    long = GpuRequest("long", "fay", 2, 2, max_runtime=20 * H)
    assert [g.request_id for g in plan_dequeue([head, short], 2, holdings, now=H)] == ["short"]
    assert plan_dequeue([head, short], 2, holdings, now=H)[0].backfilled
    # The long one would still hold 2 GPUs at 10h, leaving 6 + 2 - 2 = 6 >= 4: spare GPUs exist.
    assert [g.request_id for g in plan_dequeue([head, long], 2, holdings, now=H)] == ["long"]
    # With the head asking 8 there is nothing spare at 10h: the long one must wait.
    big_head = GpuRequest("head", "eli", 8, 0)
    assert plan_dequeue([big_head, long], 2, holdings, now=H) == []
    assert [g.request_id for g in plan_dequeue([big_head, short], 2, holdings, now=H)] == ["short"]


def test_unbounded_request_never_backfills_into_gpus_the_head_needs():
    holdings = [running("x", "ava", 6)]  # no max runtime: ends never known
    head = GpuRequest("head", "eli", 8, 0)
    unbounded = GpuRequest("u", "ben", 1, 1)
    assert plan_dequeue([head, unbounded], 2, holdings, now=H) == []


def test_first_fit_lets_small_requests_overtake_a_blocked_big_one():
    holdings = [running("x", "ava", 6)]
    queue = [GpuRequest("head", "eli", 8, 0), GpuRequest("u", "ben", 1, 1)]
    assert [g.request_id for g in plan_dequeue(queue, 2, holdings, now=H, backfill="first_fit")] == ["u"]


def head_earliest_start(needed, free, releases, now):
    """When ``needed`` GPUs are free if each (end, gpus) in ``releases`` frees at its end."""
    available = free
    if available >= needed:
        return now
    for end, gpus in sorted(releases):
        available += gpus
        if available >= needed:
            return end
    return math.inf


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 4), st.one_of(st.none(), st.floats(0.5, 48))), min_size=1, max_size=8),
    st.lists(st.tuples(st.integers(1, 4), st.one_of(st.none(), st.floats(0.5, 48))), max_size=6),
    st.integers(0, 8),
)
def test_backfill_never_delays_the_head_and_never_overcommits(held, asked, free):
    now = 0.25 * H
    total = free + sum(g for g, _ in held)
    holdings = [running(f"h{i}", f"u{i}", g, 0.0, None if r is None else r * H) for i, (g, r) in enumerate(held)]
    queue = [
        GpuRequest(f"q{i}", f"w{i}", g, float(i), max_runtime=None if r is None else r * H)
        for i, (g, r) in enumerate(asked)
        if g <= total
    ]
    grants = plan_dequeue(queue, free, holdings, now)
    assert sum(g.gpus for g in grants) <= free
    started = {g.request_id for g in grants}
    blocked = [index for index, r in enumerate(queue) if r.id not in started]
    if not blocked:
        return
    head = queue[blocked[0]]
    releases = [(max(a.expected_end, now), a.gpus) for a in holdings]
    ahead = [r for r in queue[: blocked[0]]]  # all started: they precede the head
    behind = [r for r in queue[blocked[0] :] if r.id in started]
    assert all(g.backfilled for g in grants if g.request_id in {r.id for r in behind})

    def grant_releases(requests):
        return [(now + (r.max_runtime if r.max_runtime is not None else math.inf), r.gpus) for r in requests]

    without_backfill = head_earliest_start(
        head.gpus, free - sum(r.gpus for r in ahead), releases + grant_releases(ahead), now
    )
    with_backfill = head_earliest_start(
        head.gpus, free - sum(r.gpus for r in ahead + behind), releases + grant_releases(ahead + behind), now
    )
    assert with_backfill <= without_backfill


def test_impossible_requests_are_refused_with_what_is_allowed():
    request = GpuRequest("r", "ben", 6, 0, "robotics")
    assert "at most 4" in refusal_reason(request, 8, {"robotics": 4}, {})
    assert "this server has 4" in refusal_reason(request, 4, {}, {})
    assert refusal_reason(GpuRequest("r", "ben", 2, 0), 8, {}, {"ben": 4}) is None
    # An impossible request never blocks the queue behind it.
    grants = plan_dequeue(
        [request, GpuRequest("s", "fay", 1, 1)], 2, [running("x", "ava", 6)], now=0, pools={"robotics": 4}
    )
    assert [g.request_id for g in grants] == ["s"]


# --- reclamation ------------------------------------------------------------------------


def decide(allocation, busy, now, **kw):
    options = dict(idle_timeout=H, max_runtime=None, someone_waiting=True, only_when_waiting=True, warn_before=15 * 60)
    options.update(kw)
    return reclaim_decisions([allocation], {allocation.id: busy}, now, **options)


def test_idle_allocation_is_warned_then_reclaimed_after_the_warning_period():
    allocation = running("a", "ava", 4, 0.0, last_busy_at=0.0)
    assert decide(allocation, 0.0, 30 * 60) == []
    [warning] = decide(allocation, 0.0, 50 * 60)
    assert isinstance(warning, Warn) and warning.reason == "idle"
    assert warning.reclaim_at == pytest.approx(65 * 60)
    assert "stopped in 15 min" in warning.message
    warned = running("a", "ava", 4, 0.0, last_busy_at=0.0, warned_at=50 * 60)
    assert decide(warned, 0.0, 60 * 60) == []  # warned only 10 minutes ago
    [reclaim] = decide(warned, 0.0, 65 * 60)
    assert isinstance(reclaim, Reclaim) and reclaim.gpus == 4 and reclaim.reason == "idle"
    assert "idle for 1 h 05 min" in reclaim.message


@settings(max_examples=200, deadline=None)
@given(st.floats(0.05, 1.0), st.floats(0, 30 * DAY), st.booleans(), st.booleans())
def test_a_busy_allocation_is_never_reclaimed_for_idleness(busy_fraction, now, waiting, only_when_waiting):
    allocation = running("a", "ava", 2, 0.0, last_busy_at=0.0, warned_at=0.0, warned_for="idle")
    actions = decide(allocation, busy_fraction, now, someone_waiting=waiting, only_when_waiting=only_when_waiting)
    assert actions == []


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1.0), st.floats(0, 10 * H - 15 * 60 - 1), st.booleans())
def test_nothing_happens_under_max_runtime_unless_the_idle_rule_applies(busy_fraction, now, waiting):
    # No idle timeout, so only the runtime rule could act: nothing before its warning is due.
    allocation = running("a", "ava", 2, 0.0, max_runtime=10 * H, last_busy_at=0.0)
    assert decide(allocation, busy_fraction, now, idle_timeout=None, someone_waiting=waiting) == []


def test_an_allocation_without_telemetry_counts_as_busy():
    allocation = running("a", "ava", 2, 0.0, last_busy_at=0.0, warned_at=H)
    actions = reclaim_decisions([allocation], {}, 10 * H, idle_timeout=H, someone_waiting=True)
    assert actions == []


def test_nothing_is_reclaimed_when_nobody_waits_if_so_configured():
    allocation = running("a", "ava", 2, 0.0, last_busy_at=0.0, warned_at=H)
    assert decide(allocation, 0.0, 10 * H, someone_waiting=False) == []
    assert isinstance(decide(allocation, 0.0, 10 * H, someone_waiting=False, only_when_waiting=False)[0], Reclaim)


def test_a_warning_given_before_the_gpus_got_busy_again_does_not_count():
    # Warned at 50 min, busy again at 55 min, idle since: a fresh warning, not a reclaim.
    allocation = running("a", "ava", 2, 0.0, last_busy_at=55 * 60, warned_at=50 * 60)
    [action] = decide(allocation, 0.0, 55 * 60 + H)
    assert isinstance(action, Warn)


@pytest.mark.parametrize("busy", [1.0, 0.0])
def test_max_runtime_warns_then_stops_a_server_busy_or_idle_even_when_nobody_waits(busy):
    # 10 h limit, 15 min warning: warned at 9 h 45, whatever the load and with nobody waiting.
    options = dict(idle_timeout=None, someone_waiting=False, only_when_waiting=True)
    server = running("a", "ava", 2, 0.0, max_runtime=10 * H, last_busy_at=9 * H)
    assert decide(server, busy, 9 * H + 44 * 60, **options) == []
    [warning] = decide(server, busy, 9 * H + 45 * 60, **options)
    assert isinstance(warning, Warn) and warning.reason == "max_runtime"
    assert warning.reclaim_at == 10 * H
    assert warning.message == (
        "Your server will be stopped in 15 min: it has run 9 h 45 min of its 10 h limit, busy or not. "
        "Save your work; your home is kept."
    )
    warned = running("a", "ava", 2, 0.0, max_runtime=10 * H, last_busy_at=9 * H, warned_at=9.75 * H, **WARNED_RUNTIME)
    assert decide(warned, busy, 10 * H - 1, **options) == []  # warned once, not again
    [stop] = decide(warned, busy, 10 * H, **options)
    assert isinstance(stop, Reclaim) and stop.reason == "max_runtime" and stop.gpus == 2
    assert stop.message == "Stopped ava's server: it ran 10 h, its limit is 10 h."


WARNED_RUNTIME = {"warned_for": "max_runtime"}


def test_a_server_found_past_its_limit_unwarned_gets_the_full_warning_first():
    # The reclaimer was down: the server ran 12 h of 10 h without a warning.
    late = running("a", "ava", 2, 0.0, max_runtime=10 * H, last_busy_at=12 * H)
    [warning] = decide(late, 1.0, 12 * H, idle_timeout=None)
    assert isinstance(warning, Warn) and warning.reclaim_at == 12 * H + 15 * 60
    warned = running("a", "ava", 2, 0.0, max_runtime=10 * H, warned_at=12 * H, **WARNED_RUNTIME)
    assert decide(warned, 1.0, 12 * H + 14 * 60, idle_timeout=None) == []
    assert isinstance(decide(warned, 1.0, 12 * H + 15 * 60, idle_timeout=None)[0], Reclaim)


def test_the_policys_max_runtime_applies_when_the_allocation_has_none():
    server = running("a", "ava", 1, 0.0, last_busy_at=0.0)
    [warning] = decide(server, 1.0, 2 * H, idle_timeout=None, max_runtime=2 * H)
    assert warning.reason == "max_runtime"
    assert decide(server, 1.0, 2 * H, idle_timeout=None, max_runtime=None) == []


def test_an_idle_warning_does_not_count_for_the_runtime_rule_nor_the_reverse():
    # Idle-warned at 9 h 40 (reclaim due 9 h 55 if idle), but the runtime warning opens at 9 h 45.
    idle_warned = running("a", "ava", 2, 0.0, max_runtime=10 * H, last_busy_at=8 * H, warned_at=9 * H + 40 * 60)
    [action] = decide(idle_warned, 0.0, 9 * H + 50 * 60, idle_timeout=H + 55 * 60)
    assert isinstance(action, Warn) and action.reason == "max_runtime"
    # An idle reclaim already due is not postponed by the runtime rule.
    [action] = decide(idle_warned, 0.0, 9 * H + 55 * 60, idle_timeout=H + 55 * 60)
    assert isinstance(action, Reclaim) and action.reason == "idle"
    # A runtime warning is no idle warning: an idle server under its limit is warned for idleness.
    runtime_warned = running("a", "ava", 2, 0.0, max_runtime=10 * H, last_busy_at=0.0, warned_at=H, **WARNED_RUNTIME)
    [action] = decide(runtime_warned, 0.0, 2 * H)
    assert isinstance(action, Warn) and action.reason == "idle"


def test_an_idle_server_under_its_max_runtime_is_kept_unless_the_idle_rule_applies():
    server = running("a", "ava", 2, 0.0, max_runtime=10 * H, last_busy_at=0.0, warned_at=H, warned_for="idle")
    assert decide(server, 0.0, 5 * H, someone_waiting=False) == []  # idle 5 h, nobody waits
    [stop] = decide(server, 0.0, 5 * H, someone_waiting=True)
    assert isinstance(stop, Reclaim) and stop.reason == "idle"


# --- wait estimate ----------------------------------------------------------------------


def test_wait_estimate_counts_position_and_when_gpus_free_up():
    holdings = [running("x", "ava", 6, 0, 10 * H), running("y", "eli", 2, 0, 4 * H)]
    queue = [GpuRequest("a", "fay", 2, 0, max_runtime=3 * H), GpuRequest("b", "ben", 4, 1, max_runtime=2 * H)]
    first = estimate_wait("a", queue, 0, holdings, now=H)
    assert (first.position, first.ahead, first.earliest_start) == (1, 0, 4 * H)
    second = estimate_wait("b", queue, 0, holdings, now=H)
    assert second.position == 2 and second.earliest_start == 10 * H
    assert second.estimated_wait == pytest.approx(9 * H)
    assert second.waiting_for == "4 GPUs (0 free now, 1 request ahead)"


def test_wait_is_unknown_when_gpus_are_held_without_a_limit():
    estimate = estimate_wait("a", [GpuRequest("a", "fay", 2, 0)], 0, [running("x", "ava", 8)], now=H)
    assert estimate.earliest_start is None and estimate.position == 1
