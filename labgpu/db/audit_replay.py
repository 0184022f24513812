"""Replaying the allocation audit: proof, from the ledger's own record, that no GPU was ever
granted while someone held it.

Every grant, adoption and release is one audit row written in the transaction that made it,
and those transactions hold the database's exclusive lock (:mod:`labgpu.db.engine`), so the
rows' ids are in commit order. Replaying them in that order rebuilds who held what at every
moment; a grant of a GPU already held is a double grant, a release of a GPU the allocation did
not hold is a broken record. The storm test and benchmarks check both are empty, and that
what the replay ends with is what the ledger holds now.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from labgpu.db.ledger import AuditEvent

__all__ = ["AuditReplay", "replay_audit"]


@dataclass
class AuditReplay:
    """What replaying the audit found; ``held``: GPU UUID -> allocation id holding it at the end."""

    events: int = 0
    grants: int = 0
    releases: int = 0
    double_grants: list[str] = field(default_factory=list)
    bad_releases: list[str] = field(default_factory=list)
    held: dict[str, int] = field(default_factory=dict)

    @property
    def consistent(self) -> bool:
        return not self.double_grants and not self.bad_releases


def replay_audit(events: Iterable[AuditEvent]) -> AuditReplay:
    """Replay audit events (in id order) and report every double grant and broken release."""
    result = AuditReplay()
    for event in sorted(events, key=lambda e: e.id):
        result.events += 1
        if event.action in ("grant", "adopt"):
            result.grants += 1
            for uuid in event.gpu_uuids:
                holder = result.held.get(uuid)
                if holder is not None:
                    result.double_grants.append(
                        f"event {event.id}: {uuid} granted to allocation {event.allocation_id} "
                        f"({event.user}/{event.server}) while allocation {holder} held it"
                    )
                result.held[uuid] = event.allocation_id
        elif event.action == "release":
            result.releases += 1
            for uuid in event.gpu_uuids:
                if result.held.get(uuid) != event.allocation_id:
                    result.bad_releases.append(
                        f"event {event.id}: allocation {event.allocation_id} released {uuid}, "
                        f"held by {result.held.get(uuid, 'nobody')}"
                    )
                else:
                    del result.held[uuid]
    return result
