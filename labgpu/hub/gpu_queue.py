"""The hub's GPU queue: a spawn that asks for more GPUs than are free waits here (when the
policy's ``fairshare.allow_queue`` is on) until a dequeue pass grants it GPUs in the ledger.

A dequeue pass runs after every release (:func:`notify_released`) and every ``poll_interval``
seconds while someone waits. It reads the queue (:mod:`labgpu.db.queue_store`), the ledger's
allocations and their history, orders the queue with :func:`labgpu.fairshare.scheduler.order_queue`
(usage decayed with ``fairshare.half_life``, shares from the quota policy) and grants with
:func:`labgpu.fairshare.scheduler.plan_dequeue` (group pools, per-user totals, EASY backfill). Only the
hub process grants; entries survive a hub restart and keep their place when their owner
spawns again, and are abandoned if nobody comes back for ``abandon_after`` seconds.

The tunables (``poll_interval``, ``abandon_after``, ``progress_interval``) are the spawner's
``gpu_queue_*`` traits. A user's groups (for pools and shares) are
:func:`labgpu.quota.user_groups` of the groups their spawn brought (recorded with the
queue entry, so they survive a restart); a user who is not waiting (a GPU holder) is in the
groups whose ``members`` list them. The queue keeps no map of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import GRANTED, QueueEntry, QueueStore
from labgpu.fairshare import scheduler
from labgpu.fairshare.scheduler import GpuRequest, RunningAllocation, Shares
from labgpu.gpus.allocator import (
    Allocation,
    GpuLimitExceeded,
    GrantRule,
    HeldUnits,
    NotEnoughGpus,
    Placement,
    ServerLimitExceeded,
)
from labgpu.quota import Limits, Policy, resolve, user_groups
from labgpu.quota.spawn_options import default_group
from labgpu.units import format_minutes, gpus_text

log = logging.getLogger("labgpu.queue")
T = TypeVar("T")

DEFAULT_HALF_LIFE = 7 * 86400.0


class QueueRefused(Exception):
    """This request can never be granted (larger than the server or the group's pool), or its
    place in the queue was taken away; ``str()`` is the message for the user."""


@dataclass(frozen=True)
class QueuedSpawn:
    """What a spawn asks the queue for: the same arguments as :meth:`Ledger.allocate`, plus the
    user's hub groups (for pools and shares) and the server's max runtime (for backfill)."""

    user: str
    server: str
    gpus: int
    groups: tuple[str, ...] = ()
    models: tuple[str, ...] | None = None
    placement: Placement = "pack"
    image: str | None = None
    exclude: tuple[str, ...] = ()
    max_runtime: float | None = None
    user_total: int | None = None  # the quota's GPUs across the user's servers (checked when granting)
    group: str | None = None  # the group it is charged to (the spawn option "group"); None: the default


@dataclass(frozen=True)
class QueueStatus:
    """What the spawn page shows a waiting user."""

    position: int
    ahead: int
    gpus: int
    free: int
    waiting_for: str
    estimated_wait: float | None  # seconds; None = cannot be bounded
    message: str


# ---------------------------------------------------------------------------------------
# From the policy to the scheduler's plain data
# ---------------------------------------------------------------------------------------


@dataclass
class PolicyView:
    """The quota policy as the scheduler needs it, per user; without a policy everyone has a
    share of 1, no pool, no total and no max runtime. ``hub_groups``: the groups that came with
    the requests being looked at (a queue entry records its spawn's)."""

    policy: Policy | None
    hub_groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    chosen: Mapping[str, str] = field(default_factory=dict)  # user -> the group their request chose
    _limits: dict[str, Limits] = field(default_factory=dict)

    def groups(self, user: str) -> tuple[str, ...]:
        """The policy's groups ``user`` is in (:func:`labgpu.quota.user_groups`)."""
        if self.policy is None:
            return ()
        return user_groups(self.policy, user, self.hub_groups.get(user, ()))

    def limits(self, user: str) -> Limits | None:
        if self.policy is None:
            return None
        if user not in self._limits:
            self._limits[user] = resolve(self.policy, user, self.groups(user))
        return self._limits[user]

    def group(self, user: str, chosen: str | None = None) -> str | None:
        """The group a request of ``user`` is charged to (its pool, its fair share, its usage):
        ``chosen`` (the spawn option "group"; else what this user's queued request chose) while
        the user is still in it, else :func:`~labgpu.quota.spawn_options.default_group` (the
        first of their groups with a pool, else their first group). One group per request: the
        scheduler's shares are a two-level tree."""
        limits = self.limits(user)
        if limits is None or not limits.groups:
            return None
        chosen = chosen or self.chosen.get(user)
        return chosen if chosen in limits.groups else default_group(limits)

    def ledger_limits(self, user: str, user_total: int | None = None, group: str | None = None) -> dict[str, Any]:
        """The limits :meth:`Ledger.allocate` checks inside its grant for ``user``: GPUs per
        server, the total across servers (``user_total`` if given) and the pool of the group the
        request is charged to (:meth:`group` of ``group``), recorded with the allocation."""
        limits = self.limits(user)
        if limits is None:
            return {"user_total": user_total}
        group = self.group(user, group)
        return {
            "server_limit": limits.gpus,
            "user_total": limits.gpus_total if user_total is None else user_total,
            "group": group,
            "pool": limits.pools.get(group) if group else None,
        }

    def max_runtime(self, user: str) -> float | None:
        limits = self.limits(user)
        return None if limits is None or limits.max_runtime is None else float(limits.max_runtime)

    def half_life(self) -> float:
        return self.policy.spec.fairshare.half_life if self.policy is not None else DEFAULT_HALF_LIFE

    def allow_queue(self) -> bool:
        return self.policy.spec.fairshare.allow_queue if self.policy is not None else True

    def shares(self, users: Sequence[str]) -> Shares:
        if self.policy is None:
            return Shares()
        spec = self.policy.spec
        group_of: dict[str, str] = {}
        user_shares: dict[str, float] = {}
        group_shares: dict[str, float] = {}
        for user in set(users):
            group = self.group(user)
            limits = self.limits(user)
            if group is None:
                user_shares[user] = limits.share if limits is not None else 1.0
                continue
            group_of[user] = group
            group_shares[group] = float(spec.groups[group].share or 1.0)
            own = self.policy.entries.get(f"users.{user}", {}).get("share")
            user_shares[user] = float(own) if own is not None else 1.0
        return Shares(users=user_shares, group_of=group_of, groups=group_shares)

    def pools(self, users: Sequence[str]) -> dict[str, int]:
        pools: dict[str, int] = {}
        for user in set(users):
            limits = self.limits(user)
            if limits is not None:
                pools.update(limits.pools)
        return pools

    def user_totals(self, users: Sequence[str]) -> dict[str, int]:
        totals: dict[str, int] = {}
        for user in set(users):
            limits = self.limits(user)
            if limits is not None:
                totals[user] = limits.gpus_total
        return totals


# ---------------------------------------------------------------------------------------
# The queue of one ledger in this process
# ---------------------------------------------------------------------------------------


def _ts(moment: datetime) -> float:
    return moment.timestamp()


def _clock_time(moment: datetime) -> str:
    return moment.astimezone().strftime("%H:%M")


def _wait_text(seconds: float | None) -> str:
    if seconds is None:
        return "estimated wait unknown (the GPUs are held without a time limit)"
    return f"estimated wait {format_minutes(max(60.0, seconds))}"  # never "0 min"


class GpuQueue:
    """Queue, dequeue passes and waiting spawns for one ledger in this (the hub's) process."""

    def __init__(
        self,
        ledger: Ledger,
        policy: Callable[[], Policy | None] = lambda: None,
        *,
        poll_interval: float = 5.0,
        abandon_after: float = 900.0,
        progress_interval: float = 3.0,
        clock: Callable[[], datetime] | None = None,
    ):
        self.ledger = ledger
        self.store = QueueStore(ledger, clock=clock)
        self.policy = policy
        self.poll_interval = poll_interval  # seconds between dequeue passes while someone waits
        self.abandon_after = abandon_after  # seconds before an entry nobody waits for is dropped
        self.progress_interval = progress_interval  # seconds between spawn-page updates
        self._live: set[int] = set()  # entries a spawn of this process is waiting on
        self._lock: asyncio.Lock | None = None
        self._wakeup: asyncio.Event | None = None

    # -- plain data for the scheduler -----------------------------------------------------

    def view(self, requests: Iterable[QueueEntry | QueuedSpawn] = ()) -> PolicyView:
        """The policy in force, with the hub groups these queue entries or spawns came with."""
        requests = list(requests)
        return PolicyView(
            self.policy(),
            {r.user: tuple(r.groups) for r in requests},
            {r.user: r.group for r in requests if r.group},
        )

    def _snapshot(
        self, view: PolicyView, entries: Sequence[QueueEntry]
    ) -> tuple[list[GpuRequest], list[RunningAllocation], int, dict[str, Allocation], dict[str, float]]:
        """Requests, running allocations, free whole GPUs and decayed usage at ``now``."""
        now = self.store.now()
        allocations = self.ledger.allocations()
        holdings: list[RunningAllocation] = []
        by_id: dict[str, Allocation] = {}
        for a in allocations:
            if not a.gpu_uuids:
                continue
            by_id[a.server_label] = a
            holdings.append(
                RunningAllocation(
                    a.server_label,
                    a.user,
                    len(a.gpu_uuids),
                    _ts(a.since),
                    group=a.group or view.group(a.user),  # the pool the ledger charged it to
                    max_runtime=view.max_runtime(a.user),
                )
            )
        policy = view.policy
        # The scheduler counts whole GPUs: what a plain one-GPU request could be granted.
        rule = GrantRule(exclude=frozenset(policy.spec.gpus.exclude) if policy is not None else frozenset())
        gpus = self.ledger.holdings()
        holds = HeldUnits.of(h.gpu for h in gpus if h.allocation)
        free = sum(1 for h in gpus if rule.grantable(h.gpu, h.present) and holds.free(h.gpu))
        half_life = view.half_life()
        intervals: dict[str, list[tuple[float, float | None, float]]] = {}
        for held in self.store.held_intervals(now - timedelta(seconds=10 * half_life), now):
            end = None if held.end is None else _ts(held.end)
            intervals.setdefault(held.user, []).append((_ts(held.start), end, float(held.gpus)))
        usage = {u: scheduler.usage_from_intervals(spans, _ts(now), half_life) for u, spans in intervals.items()}
        requests = [
            GpuRequest(
                str(e.id),
                e.user,
                e.gpus,
                _ts(e.submitted_at),
                group=view.group(e.user, e.group),
                max_runtime=e.max_runtime if e.max_runtime is not None else view.max_runtime(e.user),
            )
            for e in entries
        ]
        return requests, holdings, free, by_id, usage

    def _ordered(
        self, view: PolicyView, requests: list[GpuRequest], holdings: list[RunningAllocation], usage: dict[str, float]
    ) -> list[GpuRequest]:
        # Everyone with usage is in the share tree, in their group: a member who stopped still
        # weighs on their group's usage (as the usage pages and /metrics compute the factors).
        users = [r.user for r in requests] + [h.user for h in holdings] + sorted(usage)
        return scheduler.order_queue(requests, usage, view.shares(users), _ts(self.store.now()))

    # -- dequeue ------------------------------------------------------------------------------

    def _allocate(self, request: QueuedSpawn | QueueEntry, limits: Mapping[str, Any]) -> Allocation:
        """Grant this request its GPUs in the ledger, which checks ``limits``
        (:meth:`PolicyView.ledger_limits`) inside the grant; raises as :meth:`Ledger.allocate`."""
        return self.ledger.allocate(
            request.user,
            request.server,
            request.gpus,
            models=request.models,
            placement="spread" if request.placement == "spread" else "pack",
            image=request.image,
            exclude=request.exclude,
            **limits,
        )

    def dequeue_pass(self, grantable: Collection[int] | None = None) -> list[QueueEntry]:
        """Grant GPUs to the waiting spawns the scheduler picks now; returns the granted entries.

        Only entries in ``grantable`` (default: those a spawn of this process waits on) are
        considered. Blocking (SQLite): the hub calls it through :meth:`run_pass`.
        """
        for gone in self.store.abandon_stale(self.abandon_after):
            log.info(
                "GPU queue: %s abandoned its place (nobody waited for it since %s)",
                gone.server_label,
                _clock_time(gone.heartbeat_at),
            )
        self.store.heartbeat(sorted(self._live))
        allowed = self._live if grantable is None else set(grantable)
        entries = [e for e in self.store.waiting() if e.id in allowed]
        if not entries:
            return []
        view = self.view(entries)
        requests, holdings, free, _, usage = self._snapshot(view, entries)
        ordered = self._ordered(view, requests, holdings, usage)
        users = [r.user for r in requests] + [h.user for h in holdings]
        grants = scheduler.plan_dequeue(
            ordered, free, holdings, _ts(self.store.now()), view.pools(users), view.user_totals(users)
        )
        entry_of = {str(e.id): e for e in entries}
        granted: list[QueueEntry] = []
        for grant in grants:
            entry = entry_of[grant.request_id]
            try:
                # The same limits as a spawn granted at once: checked again inside the grant.
                allocation = self._allocate(entry, view.ledger_limits(entry.user, group=entry.group))
            except ServerLimitExceeded as e:  # the policy changed while it waited: it can never start
                if self.store.cancel(entry.id, str(e)):
                    log.info("GPU queue: %s removed: %s", entry.server_label, e)
                continue
            except (NotEnoughGpus, GpuLimitExceeded):
                continue  # e.g. free GPUs of another model than it may use, a full pool: it waits on
            if self.store.grant(entry.id, allocation.gpu_uuids):
                log.info(
                    "GPU queue: granted %s to %s after %.0f s%s",
                    ", ".join(allocation.gpu_uuids),
                    entry.server_label,
                    (self.store.now() - entry.submitted_at).total_seconds(),
                    " (backfilled)" if grant.backfilled else "",
                )
                granted.append(entry)
            else:  # cancelled meanwhile: give the GPUs back at once
                self.ledger.release(entry.user, entry.server, "queue entry cancelled while granting")
        return granted

    def _async_state(self) -> tuple[asyncio.Lock, asyncio.Event]:
        if self._lock is None or self._wakeup is None:
            self._lock, self._wakeup = asyncio.Lock(), asyncio.Event()
        return self._lock, self._wakeup

    async def run_pass(self) -> list[QueueEntry]:
        """One dequeue pass, serialized within this process, off the event loop."""
        lock, _ = self._async_state()
        async with lock:
            granted = await asyncio.to_thread(self.dequeue_pass)
        if granted:
            self.notify()
        return granted

    def notify(self) -> None:
        """Wake every waiting spawn (GPUs were released or granted): they run a pass now."""
        _, wakeup = self._async_state()
        wakeup.set()
        self._wakeup = asyncio.Event()

    # -- waiting --------------------------------------------------------------------------------

    def refusal(self, spawn: QueuedSpawn) -> str | None:
        """Why this request can never start here (so it is refused rather than queued)."""
        view = self.view([spawn])
        # The hub's GPUs this request could ever get: the grant rule's count (models, exclusions).
        rule = GrantRule(spawn.gpus, spawn.models, frozenset(spawn.exclude))
        total = sum(1 for h in self.ledger.holdings() if rule.qualifies(h.gpu, h.present))
        request = GpuRequest("new", spawn.user, spawn.gpus, 0.0, group=view.group(spawn.user, spawn.group))
        reason = scheduler.refusal_reason(request, total, view.pools([spawn.user]), view.user_totals([spawn.user]))
        return None if reason is None else reason.replace(f"{spawn.user} asked", "You asked", 1)

    async def acquire(self, spawn: QueuedSpawn, *, allow_queue: bool | None = None) -> Allocation:
        """GPUs for this spawn: at once if they are free and nobody waits, else after waiting
        in the queue (if allowed; otherwise NotEnoughGpus as before). Raises QueueRefused for a
        request that can never be met; cancelling the task takes it out of the queue."""
        if allow_queue is None:
            allow_queue = self.view().allow_queue()

        def allocate() -> Allocation:
            return self._allocate(spawn, self.view([spawn]).ledger_limits(spawn.user, spawn.user_total, spawn.group))

        def undo(allocation: Allocation) -> None:
            self.ledger.release(spawn.user, spawn.server, "spawn cancelled", granted_at=allocation.since)

        if spawn.gpus == 0 or not allow_queue:
            return await _finish_in_thread(allocate, undo)
        if not await asyncio.to_thread(self.store.someone_waiting):
            try:
                return await _finish_in_thread(allocate, undo)
            except NotEnoughGpus:
                pass
        return await self.wait(spawn)

    async def wait(self, spawn: QueuedSpawn) -> Allocation:
        """Queue this spawn and wait until a dequeue pass grants it GPUs."""
        why_not = await asyncio.to_thread(self.refusal, spawn)
        if why_not:
            raise QueueRefused(why_not)

        def enqueue() -> QueueEntry:
            return self.store.enqueue(
                spawn.user,
                spawn.server,
                spawn.gpus,
                groups=spawn.groups,
                models=spawn.models,
                placement=spawn.placement,
                image=spawn.image,
                exclude=spawn.exclude,
                max_runtime=spawn.max_runtime,
                group=spawn.group,
            )

        entry = await _finish_in_thread(enqueue, lambda e: self._give_up(e.id, spawn, "spawn cancelled or timed out"))
        self._live.add(entry.id)
        log.info("GPU queue: %s waits for %s (entry %d)", entry.server_label, gpus_text(spawn.gpus), entry.id)
        granted = False
        try:
            while True:
                await self.run_pass()
                current = await asyncio.to_thread(self.store.entry, entry.id)
                if current is not None and current.status == GRANTED:
                    allocation = await asyncio.to_thread(self.ledger.allocation_for, spawn.user, spawn.server)
                    if allocation is not None:
                        granted = True
                        return allocation
                    raise QueueRefused(
                        "Your GPUs were granted but released again before your server started; start it again."
                    )
                if current is None or current.status != "waiting":
                    why = current.reason if current is not None else "removed"
                    raise QueueRefused(f"Your place in the GPU queue was taken away ({why}); start your server again.")
                _, wakeup = self._async_state()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), timeout=self.poll_interval)
        except asyncio.CancelledError:
            # The user cancelled the pending spawn, or the hub's start_timeout ran out.
            await asyncio.to_thread(self._give_up, entry.id, spawn, "spawn cancelled or timed out")
            raise
        finally:
            self._live.discard(entry.id)
            if not granted:
                self.notify()  # a smaller request behind this one may fit now

    def _give_up(self, entry_id: int, spawn: QueuedSpawn, reason: str) -> None:
        if not self.store.cancel(entry_id, reason):
            current = self.store.entry(entry_id)
            if current is not None and current.status == GRANTED:
                self.ledger.release(spawn.user, spawn.server, reason)

    def cancel(self, user: str, server: str = "", reason: str = "cancelled by the user") -> bool:
        """Take this server's waiting entry out of the queue (its waiting spawn then fails).
        Blocking, and wakes waiting spawns: call it on the event loop's thread, or use :meth:`leave`."""
        removed = self.store.cancel_server(user, server, reason) > 0
        if removed and self._wakeup is not None:
            self.notify()
        return removed

    async def leave(self, user: str, server: str = "", reason: str = "cancelled by the user") -> bool:
        """:meth:`cancel` from a coroutine: the ledger off the event loop, the wake-up on it."""
        removed = await asyncio.to_thread(self.store.cancel_server, user, server, reason) > 0
        if removed and self._wakeup is not None:
            self.notify()
        return removed

    # -- the spawn page -------------------------------------------------------------------------

    def status(self, user: str, server: str = "") -> QueueStatus | None:
        """Position, what it waits for and the estimated wait of this server's queue entry."""
        entries = self.store.waiting()
        mine = next((e for e in entries if (e.user, e.server) == (user, server)), None)
        if mine is None:
            return None
        view = self.view(entries)
        requests, holdings, free, by_id, usage = self._snapshot(view, entries)
        ordered = self._ordered(view, requests, holdings, usage)
        now = _ts(self.store.now())
        estimate = scheduler.estimate_wait(str(mine.id), ordered, free, holdings, now)
        # Whose GPUs it waits for: those expected to end first, then the longest held.
        needed = max(0, mine.gpus - free)
        holders: list[str] = []
        count = 0
        for h in sorted(holdings, key=lambda h: (h.expected_end, h.started_at)):
            if count >= needed:
                break
            count += h.gpus
            holders.append(f"{h.user} since {_clock_time(by_id[h.id].since)}")
        what = f"waiting for {gpus_text(mine.gpus)}"
        if holders:
            shown = ", ".join(holders[:3]) + (f" and {len(holders) - 3} more" if len(holders) > 3 else "")
            what += f" held by {shown}"
        elif mine.gpus <= free:
            what += (
                f" ({free} free, but {'your group' if view.group(user) else 'you'} would exceed a GPU limit "
                "or a request ahead has them reserved)"
            )
        message = f"You are #{estimate.position} in the GPU queue: {what}; {_wait_text(estimate.estimated_wait)}"
        return QueueStatus(estimate.position, estimate.ahead, mine.gpus, free, what, estimate.estimated_wait, message)

    async def progress_events(
        self, user: str, server: str, pending: Callable[[], bool], *, interval: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """JupyterHub progress events for the spawn page while this server waits for GPUs, one
        look every ``interval`` seconds (default: ``progress_interval``)."""
        last = None
        queued = False
        while pending():
            status = await asyncio.to_thread(self.status, user, server)
            if status is None:
                if queued:
                    yield {"progress": 50, "message": "GPUs granted; starting your server"}
                    return
            else:
                queued = True
                if status.message != last:
                    last = status.message
                    yield {"progress": max(5, 40 - 5 * status.ahead), "message": status.message}
            await asyncio.sleep(self.progress_interval if interval is None else interval)


# ---------------------------------------------------------------------------------------
# One queue per ledger in this process (the spawners share it)
# ---------------------------------------------------------------------------------------

_queues: dict[str, GpuQueue] = {}


def queue_for(
    ledger: Ledger,
    policy: Callable[[], Policy | None] = lambda: None,
    *,
    poll_interval: float | None = None,
    abandon_after: float | None = None,
    progress_interval: float | None = None,
) -> GpuQueue:
    """The GpuQueue of this process for this ledger (created on first use); ``policy`` (a
    function returning the policy in force) and the tunables given are updated on every call."""
    queue = _queues.get(ledger.url)
    if queue is None:
        queue = _queues[ledger.url] = GpuQueue(ledger, policy)
    queue.policy = policy
    if poll_interval is not None:
        queue.poll_interval = poll_interval
    if abandon_after is not None:
        queue.abandon_after = abandon_after
    if progress_interval is not None:
        queue.progress_interval = progress_interval
    return queue


def notify_released(ledger: Ledger) -> None:
    """Tell the queue GPUs were released (the spawner's stop/poll): waiting spawns try now."""
    queue = _queues.get(ledger.url)
    if queue is not None and queue._wakeup is not None:
        queue.notify()


async def _finish_in_thread(work: Callable[[], T], undo: Callable[[T], object]) -> T:
    """Run blocking ``work`` in a thread. If the caller is cancelled meanwhile (the user stops a
    pending spawn, start_timeout runs out), the thread still finishes, so wait for it and undo
    what it did (a grant, a queue entry) before the cancellation goes on: nothing is left held
    or waiting for a spawn that is gone."""
    task = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(undo, await task)
        raise
