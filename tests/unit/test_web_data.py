"""The pages' data layer: busy hours read from rollups equal TelemetryDB.usage's from raw
samples (the poller's real write/roll-up/prune path), held hours per day add up to
usage_rows', who sees whose name, NVLink islands, and the SVG charts' accessibility."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labgpu.db.queue_store import HeldInterval
from labgpu.db.telemetry_store import TelemetryDB
from labgpu.db.telemetry_views import TelemetryViews
from labgpu.db.usage import held_per_day
from labgpu.gpus.simulated import simulated_gpus
from labgpu.gpus.telemetry import WORKSPACE, GpuReading, Owner, ProcessRecord, Retention
from labgpu.web import svg
from labgpu.web.data import nvlink_islands, visible_name

START = 1_800_000_000.0  # a whole hour


def test_busy_hours_from_rollups_equal_telemetry_usage_from_raw(tmp_path):
    """Three hours of 5 s ticks, two users on two GPUs, rolled up and pruned as the poller does:
    any period (whole hours, partial minutes, the un-rolled tail) gives TelemetryDB.usage's figures."""
    path = tmp_path / "ledger.sqlite"
    rng = random.Random(5)
    db = TelemetryDB(path, clock=lambda: datetime.fromtimestamp(START + 3 * 3600, UTC))
    owners = [Owner(WORKSPACE, "c1", "alice", ""), Owner(WORKSPACE, "c2", "bob", "x")]
    ts = START
    while ts < START + 3 * 3600 + 37:
        readings = [
            (GpuReading(uuid=f"GPU-{i}", index=i, utilization_gpu=rng.randint(0, 100)), 5.0, None) for i in (0, 1)
        ]
        processes = [
            ProcessRecord(f"GPU-{i}", 100 + i, owners[i], 1000, None, rng.choice([0.0, 0.3, 1.0])) for i in (0, 1)
        ]
        processes.append(ProcessRecord("GPU-0", 200, owners[0], 10, None, 0.9))  # two processes, one tick
        db.write_tick(ts, readings, processes)
        if int(ts) % 60 == 0:
            db.roll_up(ts)
            db.prune(ts, Retention(raw_s=3600, minute_s=7200))
        ts += 5
    with TelemetryViews(str(path)) as views:
        for since, until in [
            (START, START + 3 * 3600 + 30),
            (START + 17.5, START + 2 * 3600 + 905),
            (START + 3 * 3600 - 300, START + 3 * 3600 + 35),
            (START + 1800, START + 1860),
        ]:
            expected = {u: x.gpu_hours_busy for u, x in db.usage(since, until).by_user.items()}
            got = views.busy_hours(since, until) or {}  # None: nothing recorded (usage's by_user empty)
            assert got == pytest.approx(expected, abs=1e-9), (since - START, until - START)
    db.close()


def test_no_telemetry_tables_means_no_busy_figures(tmp_path):
    from labgpu.db.ledger import Ledger

    with Ledger(tmp_path / "l.sqlite"):
        pass
    with TelemetryViews(str(tmp_path / "l.sqlite")) as views:
        assert views.latest() == {}
        assert views.busy_hours(START, START + 60) is None


@given(
    st.lists(
        st.tuples(st.integers(0, 10 * 86400), st.integers(1, 3 * 86400), st.integers(1, 4)),
        max_size=8,
    )
)
def test_held_hours_per_day_add_up(spans):
    since = datetime(2026, 11, 1, 7, 30, tzinfo=UTC)
    until = since + timedelta(days=7)
    intervals = [
        HeldInterval("alice", "", gpus, since + timedelta(seconds=start), since + timedelta(seconds=start + length))
        for start, length, gpus in spans
    ]
    expected = sum(
        max(0.0, (min(h.end, until) - max(h.start, since)).total_seconds()) * h.gpus / 3600 for h in intervals
    )
    days = held_per_day(intervals, since, until).get("alice", {})
    assert sum(days.values()) == pytest.approx(expected)
    assert all(since.date() <= d <= until.date() for d in days)


def viewer(name, admin=False, groups=()):
    return SimpleNamespace(name=name, admin=admin, groups=tuple(groups))


def test_who_sees_whose_name():
    groups = {"alice": ("vision",), "bob": ("vision",), "carol": ("nlp",)}.get
    assert visible_name(viewer("carol"), "alice", "everyone", groups) == "alice"
    assert visible_name(viewer("bob", groups=["vision"]), "alice", "group", groups) == "alice"
    assert visible_name(viewer("carol", groups=["nlp"]), "alice", "group", groups) is None
    assert visible_name(viewer("carol", groups=["nlp"]), "alice", "admins", groups) is None
    assert visible_name(viewer("root", admin=True), "alice", "admins", groups) == "alice"
    assert visible_name(viewer("alice"), "alice", "admins", groups) == "alice"


def test_nvlink_islands():
    assert nvlink_islands(simulated_gpus("2xA100-NVLink+2xL4")) == [["0", "1"]]
    assert nvlink_islands(simulated_gpus("4xL4")) == []


def parse(text):
    return ET.fromstring(text)


NS = "{http://www.w3.org/2000/svg}"


def test_charts_are_images_with_words():
    chart = parse(
        svg.held_busy_chart(
            [svg.Bar("12-01", 10.0, 4.0), svg.Bar("12-02", 0.0, 0.0), svg.Bar("12-03", 6.5, None)], title="GPU-hours"
        )
    )
    assert chart.get("role") == "img"
    assert chart.find(f"{NS}title").text == "GPU-hours"
    assert "16.5 GPU-hours held" in chart.find(f"{NS}desc").text and "4.0 busy" in chart.find(f"{NS}desc").text
    fills = {r.get("fill") for r in chart.iter(f"{NS}rect")}
    assert svg.ORANGE in fills and svg.SKY in fills  # Okabe-Ito
    ranking = parse(svg.ranking_chart([svg.Bar("alice <b>", 5.0, 1.0)], title="per user"))
    assert "alice <b>" in ranking.find(f"{NS}desc").text  # escaped in the markup, intact as text
    empty = parse(svg.held_busy_chart([], title="nothing"))
    assert "no busy figures" in empty.find(f"{NS}desc").text


def test_sparkline_scales_and_labels():
    line = parse(svg.sparkline([None, 0.0, 50.0, 100.0, 250.0], label="GPU 0"))
    assert line.get("aria-label") == "GPU 0"
    points = line.find(f"{NS}polyline").get("points").split()
    ys = [float(p.split(",")[1]) for p in points]
    assert ys[0] == 23 and ys[2] == ys[3] == 1  # 0% at the bottom, 100% and above at the top
    assert parse(svg.sparkline([None] * 60, label="idle")).find(f"{NS}polyline") is None


@pytest.mark.parametrize(("value", "top"), [(0, 1), (0.3, 0.5), (7, 10), (12, 20), (180, 200), (2600, 5000)])
def test_axis_tops(value, top):
    assert svg.nice_ceiling(value) == top


def test_an_incremental_held_log_gives_what_a_fresh_read_gives(tmp_path):
    """The web service keeps one HeldIntervalLog and reads only new audit events; after every
    grant and release it answers held_intervals exactly as a full read of the audit does."""
    from labgpu.db.held_log import HeldIntervalLog
    from labgpu.db.ledger import Ledger
    from labgpu.db.queue_store import QueueStore

    now = [datetime(2026, 11, 1, tzinfo=UTC)]
    clock = lambda: now[0]  # noqa: E731
    with Ledger(tmp_path / "l.sqlite", clock=clock) as ledger:
        ledger.sync_inventory(simulated_gpus("4xH100"))
        fresh, kept = QueueStore(ledger), QueueStore(ledger)
        kept.held_log = HeldIntervalLog()
        rng = random.Random(3)
        for step in range(40):
            now[0] += timedelta(minutes=rng.randint(1, 90))
            user = f"u{rng.randint(0, 3)}"
            if ledger.allocation_for(user, "") is None:
                if sum(len(a.gpu_uuids) for a in ledger.allocations()) < 4:
                    ledger.allocate(user, "", 1)
            else:
                ledger.release(user, "", "stopped")
            for since in (now[0] - timedelta(hours=3), now[0] - timedelta(days=30)):
                for until in (now[0], now[0] - timedelta(minutes=30)):
                    assert kept.held_intervals(since, until) == fresh.held_intervals(since, until), step
        fresh.close()
        kept.close()
