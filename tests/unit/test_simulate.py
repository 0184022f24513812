"""The simulator: trace parsing errors, virtual-clock behaviour, metrics and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from labgpu.fairshare.simulator import Simulation, jain_index, percentile, simulate, weighted_max_min
from labgpu.fairshare.trace import TraceError, dump_trace, load_trace, parse_trace

REPO = Path(__file__).resolve().parents[2]
TRACES = REPO / "benchmarks" / "traces"

HEADER = {
    "gpus": 2,
    "horizon_h": 24,
    "half_life_h": 168,
    "groups": {"lab": {"share": 1, "pool": 2}},
    "users": {
        "ava": {"group": "lab", "max_gpus": 2, "kind": "heavy"},
        "ben": {"group": "lab", "max_gpus": 2, "kind": "light"},
    },
    "policy": {"idle_timeout_h": 1, "max_runtime_h": 24, "warn_before_h": 0.25, "reclaim_only_when_waiting": True},
}


def trace_of(*sessions, **header):
    return parse_trace(dump_trace({**HEADER, **header}, list(sessions)), "t.jsonl")


def test_idle_hog_is_reclaimed_only_under_fairshare_and_the_waiting_user_gets_in():
    # ava takes both GPUs, works 1 h, then sits idle 20 h; ben arrives at 2 h for 1 h of work.
    trace = trace_of(
        {"id": "hog", "at_h": 0, "user": "ava", "gpus": 2, "phases": [["busy", 1], ["idle", 20]]},
        {"id": "b", "at_h": 2, "user": "ben", "gpus": 1, "phases": [["busy", 1]]},
    )
    fifo = simulate(trace, "fifo")
    fair = simulate(trace, "fairshare")
    assert fifo["light_mean_wait_h"] == pytest.approx(19.0)  # until ava's session ends at 21 h
    assert fair["reclaims"] == 1
    # Idle since 1 h, idle_timeout 1 h, warned at 2 h (ben waiting), reclaimed 15 min later.
    assert fair["light_mean_wait_h"] == pytest.approx(0.25, abs=1 / 12)
    assert fair["idle_gpu_h_reclaimed"] == pytest.approx(2 * (21 - 2.25), abs=0.2)
    assert fair["gpu_held_fraction"] < fifo["gpu_held_fraction"]
    assert fair["gpu_busy_fraction"] == pytest.approx(fifo["gpu_busy_fraction"])


def test_nothing_is_reclaimed_when_nobody_waits():
    trace = trace_of({"id": "hog", "at_h": 0, "user": "ava", "gpus": 2, "phases": [["busy", 1], ["idle", 20]]})
    assert simulate(trace, "fairshare")["reclaims"] == 0


def test_reclaimed_work_is_asked_for_again_when_its_owner_returns():
    # ava's session: busy 1 h, idle 5 h, busy 2 h. Reclaimed while idle, she resubmits at 6 h.
    trace = trace_of(
        {"id": "a", "at_h": 0, "user": "ava", "gpus": 2, "phases": [["busy", 1], ["idle", 5], ["busy", 2]]},
        {"id": "b", "at_h": 2, "user": "ben", "gpus": 2, "phases": [["busy", 1]]},
    )
    result = Simulation(trace, "fairshare").run()
    assert result.reclaims == 1
    assert len(result.waits_h["ava"]) == 2  # the original request and the resubmission
    assert result.busy_h["ava"] == pytest.approx(2 * 3)  # all of her work still got done
    assert result.unfinished == 0


def test_fairshare_lets_the_light_user_ahead_of_a_heavy_users_queue():
    sessions = [{"id": f"h{i}", "at_h": 0.1 * i, "user": "ava", "gpus": 1, "phases": [["busy", 4]]} for i in range(4)]
    sessions.append({"id": "light", "at_h": 0.5, "user": "ben", "gpus": 1, "phases": [["busy", 1]]})
    trace = trace_of(
        *sessions,
        gpus=1,
        groups={"lab": {"share": 1}},
        users={"ava": {"group": "lab", "kind": "heavy"}, "ben": {"group": "lab", "kind": "light"}},
    )
    assert simulate(trace, "fifo")["light_mean_wait_h"] == pytest.approx(16 - 0.5)
    assert simulate(trace, "fairshare")["light_mean_wait_h"] == pytest.approx(4 - 0.5)


def test_trace_errors_say_where_and_what_is_allowed():
    with pytest.raises(TraceError, match=r"t.jsonl:2: gpus must be an integer >= 1 \(got 0\)"):
        parse_trace(dump_trace(HEADER, [{"at_h": 1, "user": "ava", "gpus": 0, "phases": [["busy", 1]]}]), "t.jsonl")
    with pytest.raises(TraceError, match=r"t.jsonl:2: phases\[0\] must be \[\"busy\"\|\"idle\", hours\]"):
        parse_trace(dump_trace(HEADER, [{"at_h": 1, "user": "ava", "gpus": 1, "phases": [["sleep", 1]]}]), "t.jsonl")
    with pytest.raises(TraceError, match=r"t.jsonl:1:2: not valid JSON"):
        parse_trace("{oops\n", "t.jsonl")
    with pytest.raises(TraceError, match='no "cluster" line'):
        parse_trace('{"type": "session", "user": "a", "gpus": 1, "at_h": 0, "phases": [["busy", 1]]}\n', "t.jsonl")
    with pytest.raises(TraceError, match="more than the cluster's 2"):
        parse_trace(dump_trace(HEADER, [{"at_h": 1, "user": "ava", "gpus": 3, "phases": [["busy", 1]]}]), "t.jsonl")


def test_metrics_helpers():
    assert jain_index([1, 1, 1, 1]) == 1.0
    assert jain_index([1, 0, 0, 0]) == pytest.approx(0.25)
    assert percentile([1, 2, 3, 4, 5], 0.5) == 3
    assert percentile([0, 10], 0.95) == pytest.approx(9.5)
    # 10 GPU-hours shared by weight 1:1; ben only wants 2, so ava is entitled to the other 8.
    assert weighted_max_min(10, {"ava": 20, "ben": 2}, {"ava": 1, "ben": 1}) == {"ava": 8, "ben": 2}


def test_committed_traces_load_and_deadline_week_has_three_times_the_sessions():
    calm = load_trace(TRACES / "calm-week.jsonl")
    deadline = load_trace(TRACES / "deadline-week.jsonl")
    assert calm.gpus == deadline.gpus == 8
    assert len({u for u in deadline.users}) == 12
    assert 2.5 <= len(deadline.sessions) / len(calm.sessions) <= 3.5


def test_generator_is_seeded_and_reproduces_the_committed_traces(tmp_path):
    subprocess.run(
        [sys.executable, str(TRACES / "make_traces.py"), "--out", str(tmp_path)], check=True, capture_output=True
    )
    for name in ("calm-week.jsonl", "deadline-week.jsonl"):
        assert (tmp_path / name).read_text() == (TRACES / name).read_text()


def test_cli_prints_a_table_and_json_and_refuses_a_bad_trace_without_a_traceback(tmp_path):
    labgpu = [sys.executable, "-m", "labgpu.cli", "simulate"]
    table = subprocess.run([*labgpu, str(TRACES / "calm-week.jsonl")], capture_output=True, text=True, check=True)
    assert "fairshare" in table.stdout and "p95 wait (h)" in table.stdout
    as_json = subprocess.run(
        [*labgpu, str(TRACES / "calm-week.jsonl"), "--policy", "fifo", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(as_json.stdout)["results"][0]["policy"] == "fifo"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(dump_trace(HEADER, [{"at_h": -1, "user": "ava", "gpus": 1, "phases": [["busy", 1]]}]))
    refused = subprocess.run([*labgpu, str(bad)], capture_output=True, text=True)
    assert refused.returncode == 2
    assert "bad.jsonl:2: at_h must be a number >= 0 (got -1)" in refused.stderr
    assert "Traceback" not in refused.stderr
