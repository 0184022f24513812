"""A lab's history in a real ledger, for the pages' tests and benchmarks/pages.py: GPUs, users
holding them in sessions over days (through the real Ledger API, so the audit log is what a hub
writes), queue waits, reclaim notices, sessions, and the poller's telemetry (raw samples for the
last hours, minute and hour rollups before) written straight into its tables at the sizes a
5 s poller with the default retention leaves."""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import QueueStore
from labgpu.db.session_store import SessionStore
from labgpu.db.telemetry_store import TelemetryDB
from labgpu.gpus.simulated import simulated_gpus


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Lab:
    path: Path
    now: datetime
    gpus: list[str]
    users: list[str]
    holders: dict[str, str] = field(default_factory=dict)  # server label -> user, held at `now`
    waiting: list[str] = field(default_factory=list)
    warned: list[str] = field(default_factory=list)


def build_lab(
    path: Path,
    *,
    preset: str = "4xH100-NVLink",
    users: int = 5,
    days: int = 3,
    raw_hours: float = 2.0,
    tick: float = 5.0,
    waiting: int = 2,
    warned: int = 1,
    now: datetime | None = None,
    seed: int = 14,
) -> Lab:
    """Sessions of one GPU each back to back on every GPU for ``days`` (a random user, 2-9 h,
    gaps of 0-2 h), the GPUs all held at ``now``, ``waiting`` queued spawns and ``warned``
    active reclaim warnings; telemetry busy 0-100% while held."""
    rng = random.Random(seed)
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    start = now - timedelta(days=days)
    names = [f"user{i:03d}" for i in range(users)]
    inventory = simulated_gpus(preset)
    clock = Clock(start)
    # One GPU per session, back to back on each GPU: (gpu, user, server, start, end or None, util, waited).
    planned: list[tuple[str, str, str, datetime, datetime | None, float, timedelta | None]] = []
    serial = 0
    for gpu in inventory:
        t = start + timedelta(minutes=rng.randint(0, 120))
        while t < now:
            length = timedelta(hours=rng.uniform(2, 9))
            serial += 1
            waited = timedelta(minutes=rng.randint(5, 90)) if rng.random() < 0.1 else None
            util = rng.choice([0.0, 5.0, 40.0, 80.0, 95.0])
            end = t + length if t + length < now else None
            planned.append((gpu.uuid, rng.choice(names), f"w{serial}", t, end, util, waited))
            t = t + length + timedelta(minutes=rng.randint(0, 120))
    lab = Lab(path, now, [g.uuid for g in inventory], names)
    spans = [(user, gpu, t.timestamp(), (end or now).timestamp(), util) for gpu, user, _, t, end, util, _ in planned]
    with Ledger(path, clock=clock) as ledger:
        ledger.sync_inventory(inventory)
    # Finished sessions: the rows the Ledger, QueueStore and SessionStore write, written in bulk
    # (through the API, 6,000 sessions take minutes); their allocation ids are apart from the API's.
    write_history(path, [p for p in planned if p[4] is not None])
    with Ledger(path, clock=clock) as ledger:
        store = QueueStore(ledger, clock=clock)
        sessions = SessionStore(ledger, clock=clock)
        everyone = [g.uuid for g in inventory]
        for gpu, user, server, t, _, _, waited in sorted((p for p in planned if p[4] is None), key=lambda p: p[3]):
            entry = None
            if waited is not None:
                clock.now = t - waited
                entry = store.enqueue(user, server, 1)
            clock.now = t
            allocation = ledger.allocate(user, server, 1, exclude=[u for u in everyone if u != gpu])
            if entry is not None:
                store.grant(entry.id, allocation.gpu_uuids)
            sessions.open(user, server, gpu_uuids=allocation.gpu_uuids, **SESSION)
            lab.holders[f"{user}/{server}"] = user
        clock.now = now
        for label in list(lab.holders)[:warned]:
            user, server = label.split("/")
            allocation = ledger.allocation_for(user, server)
            assert allocation is not None
            notice = store.watch(user, server, allocation.since, 1)
            store.record_warning(
                notice.id,
                reason="idle",
                reclaim_at=now + timedelta(minutes=15),
                message="Your server's GPUs have been idle for 30 min: it will be stopped at the time shown "
                "unless they get busy.",
            )
            lab.warned.append(label)
        for i in range(waiting):
            user = names[(i * 7 + 3) % len(names)]
            clock.now = now - timedelta(minutes=10 * (waiting - i))
            store.enqueue(user, f"q{i}", 1 + i % 2)
            lab.waiting.append(f"{user}/q{i}")
        clock.now = now
        store.close()
        sessions.close()
    TelemetryDB(path).close()  # the telemetry tables, migrated
    write_telemetry(path, inventory, spans, now.timestamp(), days, raw_hours, tick)
    return lab


SESSION = dict(
    container_id="c0",
    image="labgpu/workspace:local",
    image_digest="sha256:" + "ab" * 32,
    driver_version="580.65.06",
    cuda_version="13.0",
    torch_version="2.14.1",
)
STAMP = "%Y-%m-%d %H:%M:%S.%f"


def write_history(path: Path, finished) -> None:
    """Grant and release events, sessions and granted queue entries of finished sessions."""
    events, sessions, queue = [], [], []
    for n, (gpu, user, server, t, end, _, waited) in enumerate(sorted(finished, key=lambda p: p[3])):
        allocation_id = 1_000_000 + n
        events.append((t, "grant", user, server, gpu, allocation_id, "asked for 1 (pack)"))
        events.append((end, "release", user, server, gpu, allocation_id, "stopped"))
        utc = t.astimezone(UTC).strftime(STAMP)
        ended = end.astimezone(UTC).strftime(STAMP)
        sessions.append((user, server, *SESSION.values(), gpu, utc, ended, "stopped"))
        if waited is not None:
            asked = (t - waited).astimezone(UTC).strftime(STAMP)
            queue.append((user, server, asked, asked, utc, gpu))
    events.sort(key=lambda e: e[0])
    con = sqlite3.connect(path)
    con.executemany(
        "INSERT INTO allocation_events (at, action, user, server, gpu_uuids, allocation_id, image, reason, group_name) "
        "VALUES (?, ?, ?, ?, ?, ?, NULL, ?, '')",
        [(at.astimezone(UTC).strftime(STAMP), *rest) for at, *rest in events],
    )
    con.executemany(
        "INSERT INTO sessions (user, server, container_id, image, image_digest, driver_version, cuda_version, "
        "torch_version, gpu_uuids, started_at, ended_at, end_reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        sessions,
    )
    con.executemany(
        "INSERT INTO gpu_queue (user, server, gpus, groups, models, placement, image, exclude, max_runtime, "
        "submitted_at, heartbeat_at, status, ended_at, reason, gpu_uuids, group_name) "
        "VALUES (?, ?, 1, '[]', NULL, 'pack', NULL, '[]', NULL, ?, ?, 'granted', ?, 'granted', ?, '')",
        queue,
    )
    con.commit()
    con.close()


def write_telemetry(path, inventory, spans, now: float, days: int, raw_hours: float, tick: float) -> None:
    """Raw samples for the last ``raw_hours``, minute rollups for up to 30 days, hour rollups for
    all, as the poller's roll_up/prune leave them (state rows included)."""
    start = now - days * 86400
    raw_from = now - raw_hours * 3600
    minute_from = max(start, now - 30 * 86400)
    rolled_60 = now - now % 60
    rolled_3600 = now - now % 3600
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    gpu_id = {g.uuid: i + 1 for i, g in enumerate(inventory)}
    con.executemany(
        "INSERT INTO telemetry_gpu (id, uuid, gpu_index, name, memory_total_mib, healthy, first_seen) "
        "VALUES (?, ?, ?, ?, ?, 1, ?)",
        [(gpu_id[g.uuid], g.uuid, g.index, g.model, g.memory_total // 2**20, start) for g in inventory],
    )
    owners: dict[str, int] = {}
    for user, *_ in spans:
        owners.setdefault(user, len(owners) + 1)
    con.executemany(
        "INSERT INTO telemetry_owner (id, kind, container_id, user, server) VALUES (?, 'workspace', '', ?, '')",
        [(i, u) for u, i in owners.items()],
    )
    by_gpu: dict[str, list[tuple[float, float, float, int]]] = {}
    for user, gpu, begun, end, util in spans:
        by_gpu.setdefault(gpu, []).append((begun, end, util, owners[user]))

    def walk(gpu: str, first: float, last: float, step: float, offset: float):
        """(t, util, owner or None) every ``step`` over [first, last), in one pass over the spans."""
        held = sorted(by_gpu.get(gpu, ()))
        i, t = 0, first
        while t < last:
            while i < len(held) and held[i][1] <= t + offset:
                i += 1
            if i < len(held) and held[i][0] <= t + offset < held[i][1]:
                yield t, held[i][2], held[i][3]
            else:
                yield t, 0.0, None
            t += step

    gpu_rollup = "INSERT INTO telemetry_gpu_rollup VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
    owner_rollup = "INSERT INTO telemetry_owner_rollup VALUES (?,?,?,?,?,?,?,?)"
    for g in inventory:  # one GPU at a time: bounded memory at 64 GPUs x 30 days
        gid = gpu_id[g.uuid]
        minute_rows, owner_minute, hour_gpu, hour_owner, raw_rows, proc_rows = [], [], [], [], [], []
        for t, util, owner in walk(g.uuid, minute_from - minute_from % 60, rolled_60, 60, 30):
            busy, memory = 60 * util / 100, (40_000 if owner else 0)
            minute_rows.append((60, gid, int(t), 12, 60.0, busy, int(util), memory, memory * 60.0, 50, 600.0, 0.0))
            if owner:
                owner_minute.append((60, owner, gid, int(t), 12, 60.0, busy, memory))
        for t, util, owner in walk(g.uuid, start - start % 3600, rolled_3600, 3600, 1800):
            busy = 3600 * util / 100
            hour_gpu.append((3600, gid, int(t), 720, 3600.0, busy, int(util), 40_000, 0.0, 50, 0.0, 0.0))
            if owner:
                hour_owner.append((3600, owner, gid, int(t), 720, 3600.0, busy, 40_000))
        for t, util, owner in walk(g.uuid, raw_from, now, tick, 0):
            ms, memory = int(t * 1000), (40_000 if owner else 0)
            raw_rows.append((gid, ms, int(tick * 1000), int(util), int(util), memory, 50, 3000, 0, 0, 1))
            if owner:
                proc_rows.append((gid, ms, 1000 + owner, owner, int(tick * 1000), 40_000, int(util), int(util * 10)))
        con.executemany(gpu_rollup, minute_rows + hour_gpu)
        con.executemany(owner_rollup, owner_minute + hour_owner)
        con.executemany("INSERT INTO telemetry_gpu_sample VALUES (?,?,?,?,?,?,?,?,?,?,?)", raw_rows)
        con.executemany("INSERT INTO telemetry_process_sample VALUES (?,?,?,?,?,?,?,?)", proc_rows)
    state = {"rolled_60": rolled_60, "rolled_3600": rolled_3600, "kept_raw": raw_from - raw_from % 60}
    state["kept_60"] = minute_from - minute_from % 3600
    con.executemany("INSERT OR REPLACE INTO telemetry_state (key, value) VALUES (?, ?)", list(state.items()))
    con.commit()
    con.close()
