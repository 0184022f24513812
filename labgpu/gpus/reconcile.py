"""Reconcile: make the ledger and Docker agree after a hub crash or restart (pure).

The ledger says which server holds which GPUs; every workspace container carries
``org.labgpu.*`` labels saying the same from Docker's side. :func:`reconcile` compares the two
and returns a :class:`ReconcilePlan` (releases, adoptions, containers to stop, one log line per
conflict); ``labgpu.db.ledger`` applies it in one transaction and the hub stops the containers.
Plain data in and out: no Docker, NVML or database here, so every crash case is a unit test.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from labgpu.gpus.allocator import Allocation
from labgpu.gpus.inventory import short_uuid
from labgpu.labels import LABEL_GPUS, LABEL_HUB, LABEL_PREFIX, LABEL_SERVER, LABEL_USER, parse_gpus, server_label

__all__ = [
    "ALIVE_STATES",
    "Adoption",
    "ContainerClaim",
    "ContainerStop",
    "LedgerStep",
    "ReconcilePlan",
    "Release",
    "reconcile",
]

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
        labels.update({k: v for k, v in container.items() if isinstance(k, str) and k.startswith(LABEL_PREFIX)})
        gpus = parse_gpus(labels.get(LABEL_GPUS))
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
class LedgerStep:
    """One change the plan makes to the ledger: this server's allocation of these GPUs, and why."""

    user: str
    server: str
    gpu_uuids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Release(LedgerStep):
    """Drop this allocation from the ledger."""


@dataclass(frozen=True)
class Adoption(LedgerStep):
    """Record in the ledger that this running container holds these GPUs."""

    container_id: str


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

    def first_come(c: ContainerClaim) -> tuple[str, str]:
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
        reason = f"server {server_label(*claim.key)} has two running containers; keeping {keep.container_id[:12]}"
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
        winner_key: tuple[str, str] | None
        if holder and any(c.key == holder for c in contenders):
            winner_key = holder
            owner = server_label(*holder)
        elif holder_alloc is not None and is_pending(holder_alloc):
            winner_key = None  # the ledger gave it to a server still starting
            owner = holder_alloc.server_label
        else:
            winner_key = min(contenders, key=first_come).key
            owner = server_label(*winner_key)
        for claim in contenders:
            if claim.key != winner_key and claim.key not in losers:
                losers[claim.key] = (
                    f"{short_uuid(uuid)} is held by {owner}, but container {claim.container_id[:12]} of "
                    f"{server_label(*claim.key)} runs on it"
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
                f"container {claim.container_id[:12]} of {server_label(*key)} runs on GPUs the inventory does not "
                f"list ({', '.join(unknown)}); recording only the known ones"
            )
        ledger = ledger_by_key.get(key)
        if ledger is not None and set(ledger.gpu_uuids) == set(known):
            kept.append(key)
            continue
        if ledger is not None:
            reason = (
                f"container {claim.container_id[:12]} of {server_label(*key)} runs on "
                f"{', '.join(map(short_uuid, known)) or 'no GPUs'}, the ledger said "
                f"{', '.join(map(short_uuid, ledger.gpu_uuids)) or 'no GPUs'}; the container wins"
            )
            conflicts.append(reason)
            releases.append(Release(ledger.user, ledger.server, ledger.gpu_uuids, "reconcile: " + reason))
        if known:
            adoptions.append(
                Adoption(
                    claim.user,
                    claim.server,
                    tuple(known),
                    "reconcile: adopted running container " + claim.container_id[:12],
                    container_id=claim.container_id,
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
