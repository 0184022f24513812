"""The GPU telemetry poller: every tick, read each GPU (NVML or a recorded trace), attribute its
processes to the containers and users behind them, and write them to the database a few ticks
per transaction; every few minutes, roll finished minutes up and prune.

Like jupyterhub-idle-culler, the service reads top to bottom: the :class:`Poller` loop, then
how it starts on a host whose driver is not ready. It runs in its own process
(``labgpu poller``); if it dies, spawning goes on with the last data. The readings and samples
are plain data (:mod:`labgpu.gpus.telemetry`), the sources live beside the inventory
(:mod:`labgpu.gpus.sampling`), attribution in :mod:`labgpu.services.attribution`, and the
database is reached only through the store the poller is handed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from labgpu.gpus.sampling import DEFAULT_INTERVAL_S, MIN_INTERVAL_S, TelemetrySource
from labgpu.gpus.telemetry import (
    HOST,
    HOUR,
    MINUTE,
    WORKSPACE,
    GpuReading,
    Owner,
    ProcessRecord,
    Retention,
    TelemetryStore,
    Tick,
    bucket_start,
    busy_shares,
    health_problem,
)
from labgpu.services.attribution import ProcessAttributor

log = logging.getLogger(__name__)

DEFAULT_WRITE_EVERY = 6  # ticks per transaction for `labgpu poller`: 30 s at the 5 s default
DEFAULT_ROLL_UP_EVERY_S = 600  # `labgpu poller` rolls up (and prunes) every 10 minutes
MAX_PENDING_TICKS = 720  # unwritten ticks kept while the database refuses writes (an hour at 5 s)


@dataclass
class TickReport:
    """What one tick did and cost: CPU seconds in the source (NVML's own time) and in total."""

    ts: float
    gpus: int
    processes: int
    unhealthy: list[str] = field(default_factory=list)
    source_cpu_s: float = 0.0
    total_cpu_s: float = 0.0

    @property
    def poller_cpu_s(self) -> float:
        """CPU time on top of the source: attribution, arithmetic and the database write."""
        return self.total_cpu_s - self.source_cpu_s


class Poller:
    """Every tick: read all GPUs, attribute processes, write one transaction, and once a minute
    roll up and prune. A GPU that errors is recorded unhealthy; the others go on."""

    def __init__(
        self,
        source: TelemetrySource,
        store: TelemetryStore,
        attributor: ProcessAttributor,
        interval_s: float = DEFAULT_INTERVAL_S,
        retention: Retention | None = None,
        on_health_change: Callable[[str, str | None], Any] | None = None,
        write_every: int = 1,
        roll_up_every_s: int = MINUTE,
    ) -> None:
        """``on_health_change(uuid, problem_or_None)`` is called the first time this process
        sees each GPU (clearing what an earlier run left) and whenever one turns unhealthy or
        recovers; ``labgpu poller`` wires it to :meth:`labgpu.db.ledger.Ledger.set_gpu_health`.

        ``write_every`` ticks are written in one transaction, and finished minutes are rolled up
        (and what is past its retention pruned) every ``roll_up_every_s`` seconds; ``labgpu
        poller`` uses :data:`DEFAULT_WRITE_EVERY` and :data:`DEFAULT_ROLL_UP_EVERY_S`. A health
        change and a roll-up write at once; a tick whose write fails stays buffered for the
        next (up to :data:`MAX_PENDING_TICKS`). Queries read raw samples where minutes are not
        rolled up yet, so the figures do not depend on either."""
        if interval_s < MIN_INTERVAL_S:
            raise ValueError(
                f"--interval must be >= {MIN_INTERVAL_S:g} s (got {interval_s:g}): NVML takes a driver lock"
            )
        if write_every < 1:
            raise ValueError(f"--write-every must be >= 1 tick (got {write_every})")
        if roll_up_every_s < MINUTE or roll_up_every_s % MINUTE or HOUR % roll_up_every_s:
            raise ValueError(f"roll_up_every_s must be whole minutes dividing an hour (got {roll_up_every_s})")
        self.source = source
        self.store = store
        self.attributor = attributor
        self.interval_s = interval_s
        self.retention = retention or Retention()
        self.on_health_change = on_health_change
        self.write_every = write_every
        self.roll_up_every_s = roll_up_every_s
        self._pending: list[Tick] = []  # ticks read but not written yet, oldest first
        self._dropping = False
        self._last_ts: dict[str, float] = {}
        self._last_roll_up: int | None = None
        self._problems: dict[str, str] = {}
        self._health_reported: set[str] = set()  # GPUs whose current health the hook has taken
        self._owners: dict[int, Owner] = {}  # the last tick's settled owners, by host PID

    def tick(self, now: float) -> TickReport:
        cpu_start = time.process_time()
        readings = self.source.read()
        cpu_source = time.process_time()
        gpus: list[tuple[GpuReading, float, str | None]] = []
        processes: list[ProcessRecord] = []
        report = TickReport(ts=now, gpus=len(readings), processes=0)
        owners: dict[int, Owner] = {}
        health_changed = False
        for reading in readings:
            last = self._last_ts.get(reading.uuid)
            # A gap (poller down) is not counted as seconds observed: cap each sample at 2 ticks.
            dt = self.interval_s if last is None else min(max(now - last, 0.0), 2 * self.interval_s)
            self._last_ts[reading.uuid] = now
            problem = health_problem(reading)
            health_changed |= self._problems.get(reading.uuid) != problem
            self._log_health_change(reading.uuid, problem)
            if problem:
                report.unhealthy.append(reading.uuid)
            gpus.append((reading, dt, problem))
            shares = busy_shares(reading)
            for p in reading.processes:
                owner = owners.get(p.pid) or self._owners.get(p.pid) or self.attributor.owner_of(p.pid)
                owners[p.pid] = owner
                processes.append(ProcessRecord(reading.uuid, p.pid, owner, p.used_memory_mib, p.sm_util, shares[p.pid]))
        report.processes = len(processes)
        # A process listed on consecutive ticks keeps its owner: its /proc/PID/cgroup is read
        # once, not every tick (a host PID is not reused while its process runs). Only settled
        # answers are kept: another container (or one whose labels Docker did not give) and a
        # process gone before we looked are asked again.
        self._owners = {pid: o for pid, o in owners.items() if o.kind in (WORKSPACE, HOST)}
        self._pending.append((now, gpus, processes))
        if len(self._pending) > MAX_PENDING_TICKS:
            del self._pending[0]
            if not self._dropping:
                log.error("Telemetry writes keep failing; from now on the oldest unwritten ticks are dropped")
            self._dropping = True
        period = bucket_start(now, self.roll_up_every_s)
        roll_up_due = period != self._last_roll_up
        if len(self._pending) >= self.write_every or roll_up_due or health_changed:
            self.flush()  # before the roll-up, which reads what was written
        if roll_up_due:
            self._last_roll_up = period
            self.store.roll_up(now)
            self.store.prune(now, self.retention)
        report.source_cpu_s = cpu_source - cpu_start
        report.total_cpu_s = time.process_time() - cpu_start
        return report

    def flush(self) -> None:
        """Write the buffered ticks in one transaction; if that fails they stay buffered."""
        if self._pending:
            self.store.write_ticks(self._pending)
            self._pending = []
            self._dropping = False

    def _log_health_change(self, uuid: str, problem: str | None) -> None:
        previous = self._problems.get(uuid)
        if problem and problem != previous:
            log.error("%s; the allocator will not hand this GPU out until it recovers", problem)
            self._problems[uuid] = problem
            self._health_reported.discard(uuid)
        elif not problem and previous:
            log.warning("GPU %s is healthy again", uuid)
            del self._problems[uuid]
            self._health_reported.discard(uuid)
        if self.on_health_change is None or uuid in self._health_reported:
            return
        try:
            self.on_health_change(uuid, problem)
        except Exception:  # the ledger being busy must not stop the telemetry
            log.exception("Could not record the health of GPU %s in the ledger; will retry", uuid)
        else:
            self._health_reported.add(uuid)

    def run(self, stop: threading.Event | None = None, clock: Callable[[], float] = time.time) -> None:
        """Tick every ``interval_s`` until ``stop`` is set; a slow tick delays, never stacks."""
        stop = stop or threading.Event()
        next_tick = time.monotonic()
        while not stop.is_set():
            try:
                self.tick(clock())
            except Exception:  # a failed write (disk full, locked) must not end the service
                log.exception("Telemetry tick failed; retrying at the next tick")
            next_tick += self.interval_s
            delay = next_tick - time.monotonic()
            if delay < 0:
                next_tick = time.monotonic()
                delay = 0
            stop.wait(delay)
        try:
            self.flush()
        except Exception:
            log.exception("Could not write the last %d telemetry ticks at shutdown", len(self._pending))


def open_with_backoff(
    open_source: Callable[[], TelemetrySource],
    stop: threading.Event | None = None,
    first_delay_s: float = 1.0,
    max_delay_s: float = 60.0,
    sleep: Callable[[float], Any] | None = None,
    remind_every_s: float = 3600.0,
) -> TelemetrySource | None:
    """Open the source, retrying with doubling delays (NVML not loaded yet at boot, driver being
    upgraded, or a host without NVIDIA driver) until it opens; None if ``stop`` was set.

    The process never exits for this (a managed service that exits is restarted at once: a
    crash loop), and it stays quiet: one error line saying what to check, the same again only
    when the error changes, and a reminder every ``remind_every_s`` while it keeps failing.
    """
    stop = stop or threading.Event()
    wait = sleep or stop.wait
    delay = first_delay_s
    attempt = 1
    last_error = ""
    waited_s = since_reminder_s = 0.0
    while not stop.is_set():
        try:
            source = open_source()
        except Exception as error:
            text = str(error) or type(error).__name__
            if text != last_error:
                log.error(
                    "Cannot start GPU telemetry: %s. Is the NVIDIA driver loaded and is libnvidia-ml.so "
                    "visible to the poller? Retrying with growing delays (up to %.0f s); spawning goes on "
                    "meanwhile, without GPU health or usage data.",
                    text,
                    max_delay_s,
                )
                last_error, since_reminder_s = text, 0.0
            elif since_reminder_s >= remind_every_s:
                log.warning(
                    "Still cannot start GPU telemetry after %d attempts over %.0f s: %s", attempt, waited_s, text
                )
                since_reminder_s = 0.0
            else:
                log.debug("GPU telemetry attempt %d failed: %s; next in %.0f s", attempt, text, delay)
            wait(delay)
            waited_s += delay
            since_reminder_s += delay
            delay = min(delay * 2, max_delay_s)
            attempt += 1
            continue
        if attempt > 1:
            log.warning("GPU telemetry started after %d attempts", attempt)
        return source
    return None


def ticks(poller: Poller, count: int, start: float, step_s: float | None = None) -> Iterator[TickReport]:
    """Run ``count`` ticks on a simulated clock (tests and benchmarks: a day in seconds)."""
    step = poller.interval_s if step_s is None else step_s
    for i in range(count):
        yield poller.tick(start + i * step)
