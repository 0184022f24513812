"""The allocator: which free GPUs a request gets, and why not when it cannot have them (pure).

Plain data in, plain data out: no Docker, NVML or database here. ``labgpu.db.ledger`` calls
:func:`choose_gpus` inside its transaction with the free units; :class:`NotEnoughGpus` and
:class:`UserTotalExceeded` carry the message the user reads. Reconciling the ledger with
Docker after a crash is ``labgpu.gpus.reconcile``'s concern.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from labgpu.gpus.inventory import Gpu, short_uuid
from labgpu.labels import server_label
from labgpu.units import gpus_text

__all__ = [
    "PLACEMENTS",
    "Allocation",
    "GpuLimitExceeded",
    "GrantRule",
    "GroupPoolFull",
    "HeldGpu",
    "HeldUnits",
    "NotEnoughGpus",
    "Placement",
    "ServerLimitExceeded",
    "UserTotalExceeded",
    "allocatable_unit",
    "choose_gpus",
    "model_allowed",
]

Placement = Literal["pack", "spread"]
PLACEMENTS: tuple[str, ...] = ("pack", "spread")


@dataclass(frozen=True)
class Allocation:
    """GPUs held by one server: who, which GPUs (UUIDs, in index order), since when, which image."""

    user: str
    server: str  # "" for the default server
    gpu_uuids: tuple[str, ...]
    since: datetime
    image: str | None = None
    group: str = ""  # the group whose pool these GPUs count against ("" = none)

    @property
    def server_label(self) -> str:
        """``alice`` or ``alice/lab2``: how admins name a server."""
        return server_label(self.user, self.server)


@dataclass(frozen=True)
class HeldGpu:
    """A GPU someone else holds, for telling a refused user who has the GPUs."""

    uuid: str
    user: str
    server: str
    since: datetime


def _clock(since: datetime, now: datetime) -> str:
    local_since = since.astimezone() if since.tzinfo else since
    local_now = now.astimezone() if now.tzinfo else now
    if local_since.date() == local_now.date():
        return local_since.strftime("%H:%M")
    return local_since.strftime("%Y-%m-%d %H:%M")


class NotEnoughGpus(Exception):
    """A request for N GPUs cannot be met now; ``str()`` is the message for the user:
    ``Not enough free GPUs: you asked for 2, 1 is free (GPU-3f2a… held by alice since 09:14).``"""

    MAX_LISTED = 4  # holders named in the message; the others are counted

    def __init__(
        self,
        requested: int,
        free: int,
        held: Sequence[HeldGpu] = (),
        *,
        unhealthy: int = 0,
        total: int | None = None,
        models: Collection[str] | None = None,
        now: datetime | None = None,
    ):
        self.requested = requested
        self.free = free
        self.held = tuple(held)
        self.unhealthy = unhealthy
        self.total = total
        self.models = tuple(sorted(models)) if models else None
        self.message = self._message(now or datetime.now(UTC))
        super().__init__(self.message)

    def _message(self, now: datetime) -> str:
        requested, free, total = self.requested, self.free, self.total
        kind = f" {'/'.join(self.models)}" if self.models else ""
        plural = "GPU" if requested == 1 else "GPUs"
        verb = "is" if free == 1 else "are"
        message = f"Not enough free{kind} GPUs: you asked for {requested}, {free} {verb} free"
        by_holder: dict[tuple[str, str, datetime], list[str]] = {}
        for h in sorted(self.held, key=lambda h: (h.since, h.user, h.server, h.uuid)):
            by_holder.setdefault((h.user, h.server, h.since), []).append(short_uuid(h.uuid))
        holders = list(by_holder.items())
        listed = self.MAX_LISTED
        details = [
            f"{', '.join(uuids)} held by {server_label(user, server)} since {_clock(since, now)}"
            for (user, server, since), uuids in holders[:listed]
        ]
        if len(holders) > listed:
            rest = sum(len(uuids) for _, uuids in holders[listed:])
            details.append(f"{rest} more held by {len(holders) - listed} other servers")
        if self.unhealthy:
            details.append(f"{self.unhealthy} unhealthy")
        if details:
            message += " (" + "; ".join(details) + ")"
        message += "."
        if total is not None and total < requested:
            message += f" This hub has only {gpus_text(total, kind.strip())}; ask for at most {total}."
        elif not details:
            message += f" Try again later or ask for fewer {plural}."
        return message


class GpuLimitExceeded(Exception):
    """A quota limit refuses the request whatever is free (waiting would not help); ``str()``
    is the message for the user."""


class ServerLimitExceeded(GpuLimitExceeded):
    """One server asks for more GPUs than the quota allows a server."""

    def __init__(self, requested: int, limit: int):
        self.requested, self.limit = requested, limit
        super().__init__(
            f"You asked for {gpus_text(requested)}, but your quota allows at most {gpus_text(limit)} "
            f"per server. Ask for at most {limit}."
        )


class UserTotalExceeded(GpuLimitExceeded):
    """The user's servers would hold more GPUs together than their quota's total allows;
    ``str()`` is the message for the user."""

    def __init__(self, requested: int, held_elsewhere: int, total: int):
        self.requested, self.held_elsewhere, self.total = requested, held_elsewhere, total
        super().__init__(
            f"You asked for {gpus_text(requested)}, but your other running servers "
            f"already hold {held_elsewhere} of your total of {total}. "
            f"Ask for at most {max(0, total - held_elsewhere)}, "
            "or stop another server first."
        )


class GroupPoolFull(NotEnoughGpus):
    """The group the request is charged to holds its whole pool (or the request is larger than
    the pool): like too few free GPUs, it may wait in the queue until a member releases some.
    ``holders`` is how many of the pool's GPUs each member holds; ``str()`` is the message:
    ``You asked for 2 GPUs, but vision-lab's pool of 4 GPUs is in use: alice 2, bob 2.``"""

    def __init__(self, requested: int, group: str, pool: int, holders: Mapping[str, int]):
        in_use = sum(holders.values())
        left = max(0, pool - in_use)
        who = ", ".join(f"{user} {count}" for user, count in sorted(holders.items(), key=lambda h: (-h[1], h[0])))
        if requested > pool:
            message = (
                f"You asked for {gpus_text(requested)}, but {group}'s pool is {gpus_text(pool)} "
                f"(the GPUs its members may hold together); ask for at most {pool}."
            )
        elif left == 0:
            message = (
                f"You asked for {gpus_text(requested)}, but {group}'s pool of {gpus_text(pool)} is in use: "
                f"{who}. Wait until a member of {group} stops a server."
            )
        else:
            message = (
                f"You asked for {gpus_text(requested)}, but {group}'s pool of {gpus_text(pool)} has "
                f"{left} left ({who}). Ask for at most {left}, or wait until a member of {group} stops a server."
            )
        Exception.__init__(self, message)
        self.requested, self.free, self.held = requested, left, ()
        self.unhealthy, self.total, self.models = 0, pool, None
        self.group, self.pool, self.holders = group, pool, dict(holders)
        self.message = message


def model_allowed(model: str, models: Collection[str] | None) -> bool:
    """Does a GPU model name (``NVIDIA A100-SXM4-80GB``) match an allowed model (``A100``)?"""
    if not models:
        return True
    name = model.lower()
    return any(allowed.lower() in name for allowed in models)


# --- the one "is this GPU grantable" rule -----------------------------------------------------


def allocatable_unit(gpu: Gpu) -> bool:
    """Is this a unit requests are granted: a whole GPU or a MIG slice? A GPU in MIG mode is
    granted as its slices (see ``labgpu.gpus.inventory.mig_units``), never whole."""
    return not gpu.mig_enabled


@dataclass(frozen=True)
class GrantRule:
    """Which units one request may be granted: ``gpus`` of these ``models``, never a UUID an
    admin excluded. The ledger's grant, the queue's free count and ``labgpu gpus`` all ask it.

    A unit qualifies when the inventory still lists it, neither it nor (for a MIG slice) its
    GPU is excluded, it is an allocatable unit, and its model is allowed; it is grantable when
    it also is healthy. A MIG slice goes only to a one-GPU request whose allowed models name MIG
    explicitly (``MIG 1g.10gb``), so nobody asking for "a GPU" gets a slice, and never as one
    of several (CUDA uses one MIG device per process). Who holds what is :class:`HeldUnits`'.
    """

    gpus: int = 1
    models: Collection[str] | None = None
    exclude: Collection[str] = frozenset()

    def qualifies(self, gpu: Gpu, present: bool = True) -> bool:
        """Would this unit do for the request if it were healthy and free (what "the hub has N" counts)?"""
        if not present or not allocatable_unit(gpu) or gpu.uuid in self.exclude:
            return False
        if gpu.mig_parent:
            if gpu.mig_parent in self.exclude or self.gpus != 1 or not self.models:
                return False
            name = gpu.model.lower()
            return any("mig" in allowed.lower() and allowed.lower() in name for allowed in self.models)
        return model_allowed(gpu.model, self.models)

    def grantable(self, gpu: Gpu, present: bool = True) -> bool:
        """May this unit go to the request now, if nobody holds it?"""
        return gpu.healthy and self.qualifies(gpu, present)


@dataclass(frozen=True)
class HeldUnits:
    """The units held now, and the MIG half of the rule: a GPU and its slices exclude each
    other (held whole, none of its slices is free; one slice held, the GPU is not free whole)."""

    uuids: frozenset[str] = frozenset()
    whole: frozenset[str] = frozenset()  # GPUs held whole
    sliced: frozenset[str] = frozenset()  # GPUs one of whose MIG slices is held

    @classmethod
    def of(cls, held: Iterable[Gpu]) -> HeldUnits:
        held = list(held)
        return cls(
            frozenset(g.uuid for g in held),
            frozenset(g.uuid for g in held if not g.mig_parent),
            frozenset(g.mig_parent for g in held if g.mig_parent),
        )

    def free(self, gpu: Gpu) -> bool:
        """Nobody holds this unit, nor the GPU it is a slice of, nor a slice of it."""
        return gpu.uuid not in self.uuids and gpu.uuid not in self.sliced and gpu.mig_parent not in self.whole


# --- choosing GPUs --------------------------------------------------------------------------
#
# Interconnect levels, tightest first. A request is placed in the tightest level that has one
# group large enough for it; among such groups, "pack" takes the group with the fewest free
# GPUs (best fit: big islands stay whole for big requests) and "spread" the one with the most.

_LEVELS: tuple[str, ...] = ("nvlink", "switch", "numa")


def _nvlink_components(gpus: Sequence[Gpu]) -> dict[str, str]:
    """uuid -> NVLink island id among these GPUs (connected components of the peer graph)."""
    present = {g.uuid for g in gpus}
    peers_of = {g.uuid: g.nvlink_peers for g in gpus}
    component: dict[str, str] = {}
    for gpu in sorted(gpus, key=lambda g: (g.index, g.uuid)):
        if gpu.uuid in component:
            continue
        stack, members = [gpu.uuid], []
        component[gpu.uuid] = gpu.uuid
        while stack:
            uuid = stack.pop()
            members.append(uuid)
            for peer in peers_of[uuid]:
                if peer in present and peer not in component:
                    component[peer] = gpu.uuid
                    stack.append(peer)
        if len(members) == 1:
            component[gpu.uuid] = ""  # no NVLink peer that is free: not an island
    return component


def _level_keys(gpus: Sequence[Gpu]) -> dict[str, tuple[str, ...]]:
    """uuid -> its group key at each level ("" = no group at that level)."""
    nvlink = _nvlink_components(gpus)
    return {
        g.uuid: (
            # slices of one GPU group like an NVLink island, so "pack" fills a partly used GPU
            "mig:" + g.mig_parent if g.mig_parent else nvlink[g.uuid],
            g.switch_group,
            "" if g.numa_node is None else str(g.numa_node),
        )
        for g in gpus
    }


def _group_key(keys: Mapping[str, tuple[str, ...]], gpu: Gpu, level: int) -> str:
    """The GPU's group at this level; a GPU without one is a group of its own."""
    return keys[gpu.uuid][level] or "\0" + gpu.uuid


def _groups(gpus: Sequence[Gpu], keys: Mapping[str, tuple[str, ...]], level: int) -> dict[str, list[Gpu]]:
    """Partition at one level, by group key (:func:`_group_key`, inlined: this runs for every
    free GPU at every level of every grant)."""
    grouped: dict[str, list[Gpu]] = {}
    for gpu in gpus:
        key = keys[gpu.uuid][level] or "\0" + gpu.uuid
        group = grouped.get(key)
        if group is None:
            grouped[key] = [gpu]
        else:
            group.append(gpu)
    return grouped


def _pick_group(
    groups: list[list[Gpu]],
    keys: Mapping[str, tuple[str, ...]],
    level: int,
    placement: Placement,
    sizes: Sequence[Mapping[str, int]],
) -> list[Gpu]:
    """Best fit (pack) or worst fit (spread), ties broken by the looser levels, then by index."""
    sign = 1 if placement == "pack" else -1

    def rank(group: list[Gpu]) -> tuple[int, ...]:
        first = min(group, key=lambda g: g.index)
        outer = tuple(sign * sizes[lv][_group_key(keys, first, lv)] for lv in range(level + 1, len(_LEVELS)))
        return (sign * len(group), *outer, first.index)

    return min(groups, key=rank)


def _fill(
    gpus: Sequence[Gpu], n: int, keys: Mapping[str, tuple[str, ...]], sizes: Sequence[Mapping[str, int]]
) -> list[Gpu]:
    """No group holds n: take whole groups, largest first, so the fewest links are crossed."""

    def rank(gpu: Gpu) -> tuple[int | str, ...]:
        parts: list[int | str] = []
        for level in reversed(range(len(_LEVELS))):
            key = _group_key(keys, gpu, level)
            parts += [-sizes[level][key], key]
        return (*parts, gpu.index)

    return sorted(gpus, key=rank)[:n]


def _select(
    gpus: list[Gpu], n: int, keys: Mapping[str, tuple[str, ...]], placement: Placement, top_level: int
) -> list[Gpu]:
    """Place n GPUs among ``gpus`` at the tightest level from ``top_level`` down that fits them."""
    if len(gpus) == n:
        return gpus
    partitions = [_groups(gpus, keys, level) for level in range(len(_LEVELS))]
    sizes = [{key: len(group) for key, group in partition.items()} for partition in partitions]
    for level in range(top_level, len(_LEVELS)):
        groups = list(partitions[level].values())
        if n > 1 and all(len(group) == 1 for group in groups):
            continue  # nothing at this level ties GPUs together
        feasible = [group for group in groups if len(group) >= n]
        if feasible:
            chosen = _pick_group(feasible, keys, level, placement, sizes)
            if len(chosen) == n or level + 1 >= len(_LEVELS):
                return _fill(chosen, n, keys, sizes) if len(chosen) > n else chosen
            return _select(chosen, n, keys, placement, level + 1)
    return _fill(gpus, n, keys, sizes)


def choose_gpus(
    free: Sequence[Gpu],
    n: int,
    *,
    models: Collection[str] | None = None,
    placement: Placement = "pack",
    held: Sequence[HeldGpu] = (),
    unhealthy: int = 0,
    total: int | None = None,
    now: datetime | None = None,
) -> list[Gpu]:
    """N of the free units that :class:`GrantRule` grants this request, best interconnect first,
    in index order.

    Raises :class:`NotEnoughGpus` (whose message names who holds the rest) when fewer than N
    qualify.
    """
    if n < 0:
        raise ValueError(f"a request must be for 0 or more GPUs (got {n})")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)} (got {placement!r})")
    if n == 0:
        return []
    rule = GrantRule(n, models)
    eligible = [g for g in free if rule.grantable(g)]
    sick = unhealthy + sum(1 for g in free if not g.healthy and rule.qualifies(g))
    if len(eligible) < n:
        raise NotEnoughGpus(n, len(eligible), held, unhealthy=sick, total=total, models=models, now=now)
    eligible.sort(key=lambda g: (g.index, g.uuid))
    keys = _level_keys(eligible)
    chosen = _select(eligible, n, keys, placement, 0)
    return sorted(chosen, key=lambda g: (g.index, g.uuid))
