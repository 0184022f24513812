"""Pure allocation logic: which free GPUs a request gets, and how the ledger and Docker agree.

Plain data in, plain data out: no Docker, NVML or database here. ``labgpu.db.ledger`` calls
:func:`choose_gpus` inside its transaction; the hub calls :func:`reconcile` on start with the
ledger's allocations and Docker's containers, and the ledger applies the returned plan.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from labgpu.gpus.inventory import Gpu
from labgpu.units import gpus_text

__all__ = [
    "ALIVE_STATES",
    "PLACEMENTS",
    "Adoption",
    "Allocation",
    "ContainerClaim",
    "ContainerStop",
    "HeldGpu",
    "NotEnoughGpus",
    "Placement",
    "ReconcilePlan",
    "Release",
    "choose_gpus",
    "grantable",
    "model_allowed",
    "not_enough_message",
    "reconcile",
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

    @property
    def server_label(self) -> str:
        """``alice`` or ``alice/lab2``: how admins name a server."""
        return f"{self.user}/{self.server}" if self.server else self.user


@dataclass(frozen=True)
class HeldGpu:
    """A GPU someone else holds, for telling a refused user who has the GPUs."""

    uuid: str
    user: str
    server: str
    since: datetime


def _short(uuid: str) -> str:
    return uuid[:8] + "…" if len(uuid) > 9 else uuid


def _clock(since: datetime, now: datetime) -> str:
    local_since = since.astimezone() if since.tzinfo else since
    local_now = now.astimezone() if now.tzinfo else now
    if local_since.date() == local_now.date():
        return local_since.strftime("%H:%M")
    return local_since.strftime("%Y-%m-%d %H:%M")


def not_enough_message(
    requested: int,
    free: int,
    held: Sequence[HeldGpu] = (),
    *,
    unhealthy: int = 0,
    total: int | None = None,
    models: Collection[str] | None = None,
    now: datetime | None = None,
    max_listed: int = 4,
) -> str:
    """``Not enough free GPUs: you asked for 2, 1 is free (GPU-3f2a… held by alice since 09:14).``"""
    now = now or datetime.now(UTC)
    kind = f" {'/'.join(sorted(models))}" if models else ""
    plural = "GPU" if requested == 1 else "GPUs"
    verb = "is" if free == 1 else "are"
    message = f"Not enough free{kind} GPUs: you asked for {requested}, {free} {verb} free"
    by_holder: dict[tuple[str, str, datetime], list[str]] = {}
    for h in sorted(held, key=lambda h: (h.since, h.user, h.server, h.uuid)):
        by_holder.setdefault((h.user, h.server, h.since), []).append(_short(h.uuid))
    holders = list(by_holder.items())
    details = [
        f"{', '.join(uuids)} held by {_label(user, server)} since {_clock(since, now)}"
        for (user, server, since), uuids in holders[:max_listed]
    ]
    if len(holders) > max_listed:
        rest = sum(len(uuids) for _, uuids in holders[max_listed:])
        details.append(f"{rest} more held by {len(holders) - max_listed} other servers")
    if unhealthy:
        details.append(f"{unhealthy} unhealthy")
    if details:
        message += " (" + "; ".join(details) + ")"
    message += "."
    if total is not None and total < requested:
        message += f" This hub has only {gpus_text(total, kind.strip())}; ask for at most {total}."
    elif not details:
        message += f" Try again later or ask for fewer {plural}."
    return message


class NotEnoughGpus(Exception):
    """A request for N GPUs cannot be met now; ``str()`` is the message for the user."""

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
        self.message = not_enough_message(
            requested, free, held, unhealthy=unhealthy, total=total, models=models, now=now
        )
        super().__init__(self.message)


class UserTotalExceeded(Exception):
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


def model_allowed(model: str, models: Collection[str] | None) -> bool:
    """Does a GPU model name (``NVIDIA A100-SXM4-80GB``) match an allowed model (``A100``)?"""
    if not models:
        return True
    name = model.lower()
    return any(allowed.lower() in name for allowed in models)


def grantable(gpu: Gpu, n: int, models: Collection[str] | None) -> bool:
    """May this unit go to a request for n GPUs of these models (health aside)?

    A GPU in MIG mode is never granted whole. A MIG slice goes only to a one-GPU request whose
    allowed models name MIG explicitly (``MIG 1g.10gb``), so nobody asking for "a GPU" gets a
    slice, and never as one of several (CUDA uses one MIG device per process).
    """
    if gpu.mig_enabled:
        return False
    if gpu.mig_parent:
        if n != 1 or not models:
            return False
        name = gpu.model.lower()
        return any("mig" in allowed.lower() and allowed.lower() in name for allowed in models)
    return model_allowed(gpu.model, models)


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
    """Partition at one level, by group key."""
    grouped: dict[str, list[Gpu]] = {}
    for gpu in gpus:
        grouped.setdefault(_group_key(keys, gpu, level), []).append(gpu)
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

    def rank(group: list[Gpu]) -> tuple:
        first = min(group, key=lambda g: g.index)
        outer = tuple(sign * sizes[lv][_group_key(keys, first, lv)] for lv in range(level + 1, len(_LEVELS)))
        return (sign * len(group), *outer, first.index)

    return min(groups, key=rank)


def _fill(
    gpus: Sequence[Gpu], n: int, keys: Mapping[str, tuple[str, ...]], sizes: Sequence[Mapping[str, int]]
) -> list[Gpu]:
    """No group holds n: take whole groups, largest first, so the fewest links are crossed."""

    def rank(gpu: Gpu) -> tuple:
        parts: list[Any] = []
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
    """N of the free, healthy GPUs (of an allowed model), best interconnect first, in index order.

    Raises :class:`NotEnoughGpus` (whose message names who holds the rest) when fewer than N
    qualify. MIG-enabled GPUs are not handed out whole (MIG slices are not allocated yet).
    """
    if n < 0:
        raise ValueError(f"a request must be for 0 or more GPUs (got {n})")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)} (got {placement!r})")
    if n == 0:
        return []
    eligible = [g for g in free if g.healthy and grantable(g, n, models)]
    sick = unhealthy + sum(1 for g in free if not g.healthy and grantable(g, n, models))
    if len(eligible) < n:
        raise NotEnoughGpus(n, len(eligible), held, unhealthy=sick, total=total, models=models, now=now)
    eligible.sort(key=lambda g: (g.index, g.uuid))
    keys = _level_keys(eligible)
    chosen = _select(eligible, n, keys, placement, 0)
    return sorted(chosen, key=lambda g: (g.index, g.uuid))


# --- reconciling the ledger with Docker -----------------------------------------------------

LABEL_USER = "org.labgpu.user"
LABEL_SERVER = "org.labgpu.server"
LABEL_GPUS = "org.labgpu.gpus"
LABEL_HUB = "org.labgpu.hub"

# Container states in which the container holds its GPUs (Docker's ``State.Status``).
ALIVE_STATES = frozenset({"running", "restarting", "paused"})


@dataclass(frozen=True)
class ContainerClaim:
    """What a container's labels say: this server runs on these GPUs."""

    container_id: str
    user: str
    server: str
    gpu_uuids: tuple[str, ...]
    state: str
    hub: str = ""
    created: str = ""  # Docker's creation time (ISO 8601 sorts), for deciding who came first

    @classmethod
    def from_docker(cls, container: Mapping[str, Any]) -> ContainerClaim:
        """From a flat dict (labels plus ``id``, ``state``, ``created``) or one with ``labels``."""
        labels = dict(container.get("labels") or {})
        labels.update({k: v for k, v in container.items() if isinstance(k, str) and k.startswith("org.labgpu.")})
        gpus = tuple(u.strip() for u in str(labels.get(LABEL_GPUS, "") or "").split(",") if u.strip())
        return cls(
            container_id=str(container.get("id", "")),
            user=str(labels.get(LABEL_USER, "")),
            server=str(labels.get(LABEL_SERVER, "")),
            gpu_uuids=gpus,
            state=str(container.get("state", "")).lower(),
            hub=str(labels.get(LABEL_HUB, "")),
            created=str(container.get("created", "")),
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.user, self.server)


@dataclass(frozen=True)
class Adoption:
    """Record in the ledger that this running container holds these GPUs."""

    user: str
    server: str
    gpu_uuids: tuple[str, ...]
    container_id: str
    reason: str


@dataclass(frozen=True)
class Release:
    """Drop this allocation from the ledger."""

    user: str
    server: str
    gpu_uuids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class ContainerStop:
    """This container runs on GPUs the ledger gives to another server: the hub must stop it."""

    container_id: str
    user: str
    server: str
    reason: str


@dataclass(frozen=True)
class ReconcilePlan:
    """What to change so that the ledger and Docker agree; apply releases before adoptions."""

    releases: tuple[Release, ...] = ()
    adoptions: tuple[Adoption, ...] = ()
    stops: tuple[ContainerStop, ...] = ()
    conflicts: tuple[str, ...] = ()  # one line each, for the hub's log
    kept: tuple[tuple[str, str], ...] = ()  # (user, server) already in agreement or still starting

    @property
    def empty(self) -> bool:
        return not (self.releases or self.adoptions or self.stops)


def _label(user: str, server: str) -> str:
    return f"{user}/{server}" if server else user


def reconcile(
    allocations: Iterable[Allocation],
    containers: Iterable[Mapping[str, Any] | ContainerClaim],
    *,
    hub_id: str | None = None,
    known_gpus: Collection[str] | None = None,
    now: datetime | None = None,
    pending_grace: timedelta = timedelta(0),
) -> ReconcilePlan:
    """Compare the ledger's allocations with Docker's containers and say what to change.

    Running containers of this hub are adopted; allocations without a running container are
    released (unless younger than ``pending_grace``: a spawn still starting); when two claim one
    GPU, the ledger's holder keeps it (else the older container) and the other is stopped.
    """
    now = now or datetime.now(UTC)
    allocations = list(allocations)
    claims = [c if isinstance(c, ContainerClaim) else ContainerClaim.from_docker(c) for c in containers]
    alive = [c for c in claims if c.state in ALIVE_STATES and (hub_id is None or c.hub == hub_id) and c.user]
    ledger_by_key = {(a.user, a.server): a for a in allocations}
    conflicts: list[str] = []
    stops: list[ContainerStop] = []

    def first_come(c: ContainerClaim) -> tuple:
        return (c.created or "~", c.container_id)

    # One live container per server: the ledger's GPUs (or the oldest) win, others are stopped.
    by_key: dict[tuple[str, str], ContainerClaim] = {}
    for claim in sorted(alive, key=first_come):
        current = by_key.get(claim.key)
        if current is None:
            by_key[claim.key] = claim
            continue
        ledger = ledger_by_key.get(claim.key)
        keep, drop = current, claim
        if ledger and set(claim.gpu_uuids) == set(ledger.gpu_uuids) and set(current.gpu_uuids) != set(ledger.gpu_uuids):
            keep, drop = claim, current
        by_key[claim.key] = keep
        reason = f"server {_label(*claim.key)} has two running containers; keeping {keep.container_id[:12]}"
        conflicts.append(reason)
        stops.append(ContainerStop(drop.container_id, drop.user, drop.server, reason))

    def is_pending(allocation: Allocation) -> bool:
        if pending_grace <= timedelta(0) or (allocation.user, allocation.server) in by_key:
            return False
        return now - allocation.since < pending_grace

    ledger_holder = {uuid: (a.user, a.server) for a in allocations for uuid in a.gpu_uuids}
    claimants: dict[str, list[ContainerClaim]] = {}
    for claim in by_key.values():
        for uuid in claim.gpu_uuids:
            claimants.setdefault(uuid, []).append(claim)

    losers: dict[tuple[str, str], str] = {}
    for uuid, contenders in claimants.items():
        holder = ledger_holder.get(uuid)
        holder_alloc = ledger_by_key.get(holder) if holder else None
        if holder and any(c.key == holder for c in contenders):
            winner_key: tuple[str, str] | None = holder
        elif holder_alloc is not None and is_pending(holder_alloc):
            winner_key = None  # the ledger gave it to a server still starting
        else:
            winner_key = min(contenders, key=first_come).key
        for claim in contenders:
            if claim.key != winner_key and claim.key not in losers:
                owner = _label(*winner_key) if winner_key else _label(*holder)  # type: ignore[misc]
                losers[claim.key] = (
                    f"{_short(uuid)} is held by {owner}, but container {claim.container_id[:12]} of "
                    f"{_label(*claim.key)} runs on it"
                )
    for key, reason in losers.items():
        claim = by_key.pop(key)
        conflicts.append(reason + "; stopping that container")
        stops.append(ContainerStop(claim.container_id, claim.user, claim.server, reason))

    releases: list[Release] = []
    adoptions: list[Adoption] = []
    kept: list[tuple[str, str]] = []
    for key, claim in sorted(by_key.items()):
        known = claim.gpu_uuids if known_gpus is None else tuple(u for u in claim.gpu_uuids if u in known_gpus)
        unknown = [u for u in claim.gpu_uuids if u not in known]
        if unknown:
            conflicts.append(
                f"container {claim.container_id[:12]} of {_label(*key)} runs on GPUs the inventory does not "
                f"list ({', '.join(unknown)}); recording only the known ones"
            )
        ledger = ledger_by_key.get(key)
        if ledger is not None and set(ledger.gpu_uuids) == set(known):
            kept.append(key)
            continue
        if ledger is not None:
            reason = (
                f"container {claim.container_id[:12]} of {_label(*key)} runs on "
                f"{', '.join(map(_short, known)) or 'no GPUs'}, the ledger said "
                f"{', '.join(map(_short, ledger.gpu_uuids)) or 'no GPUs'}; the container wins"
            )
            conflicts.append(reason)
            releases.append(Release(ledger.user, ledger.server, ledger.gpu_uuids, "reconcile: " + reason))
        if known:
            adoptions.append(
                Adoption(
                    claim.user,
                    claim.server,
                    tuple(known),
                    claim.container_id,
                    "reconcile: adopted running container " + claim.container_id[:12],
                )
            )
    for allocation in allocations:
        key = (allocation.user, allocation.server)
        if key in by_key:
            continue
        if key in losers:
            releases.append(
                Release(
                    allocation.user,
                    allocation.server,
                    allocation.gpu_uuids,
                    "reconcile: its container was stopped after a GPU conflict",
                )
            )
        elif is_pending(allocation):
            kept.append(key)
        else:
            releases.append(
                Release(allocation.user, allocation.server, allocation.gpu_uuids, "reconcile: no running container")
            )
    return ReconcilePlan(tuple(releases), tuple(adoptions), tuple(stops), tuple(conflicts), tuple(kept))
