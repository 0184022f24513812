"""Workspace sessions, for reproducibility: which image (reference and digest), which NVIDIA
driver and CUDA version, which GPUs, from when to when. The only code that reads or writes the
``sessions`` table (:mod:`labgpu.db.tables`, Alembic revision 0005); opened beside the ledger."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update

from labgpu.db.engine import Clock, Store, inserted_id
from labgpu.db.ledger import Ledger
from labgpu.db.tables import SessionRow
from labgpu.labels import server_label

_sessions = SessionRow.__table__


@dataclass(frozen=True)
class Session:
    """One run of a workspace container (see :class:`labgpu.db.tables.SessionRow`)."""

    id: int
    user: str
    server: str
    container_id: str
    image: str
    image_digest: str
    driver_version: str | None
    cuda_version: str | None
    torch_version: str | None
    gpu_uuids: tuple[str, ...]
    started_at: datetime
    ended_at: datetime | None
    end_reason: str

    @property
    def server_label(self) -> str:
        return server_label(self.user, self.server)


def _session(row: Any) -> Session:
    return Session(
        row.id,
        row.user,
        row.server,
        row.container_id,
        row.image,
        row.image_digest,
        row.driver_version,
        row.cuda_version,
        row.torch_version,
        tuple(u for u in row.gpu_uuids.split(",") if u),
        row.started_at,
        row.ended_at,
        row.end_reason,
    )


class SessionStore(Store):
    """Open and close sessions; list them for `labgpu usage --sessions`. Safe across processes."""

    def __init__(self, ledger: Ledger, *, clock: Clock | None = None) -> None:
        super().__init__(ledger.url, clock=clock or ledger.now, migrate=False)

    def open(
        self,
        user: str,
        server: str,
        *,
        container_id: str,
        image: str,
        image_digest: str,
        driver_version: str | None,
        cuda_version: str | None,
        torch_version: str | None,
        gpu_uuids: Sequence[str],
    ) -> int:
        """Record a started workspace; a session of this server still open is closed first."""
        now = self._clock()
        with self.writer.begin() as conn:
            conn.execute(
                update(_sessions)
                .where(_sessions.c.user == user, _sessions.c.server == server, _sessions.c.ended_at.is_(None))
                .values(ended_at=now, end_reason="superseded by a new start")
            )
            result = conn.execute(
                insert(_sessions).values(
                    user=user,
                    server=server,
                    container_id=container_id,
                    image=image,
                    image_digest=image_digest,
                    driver_version=driver_version,
                    cuda_version=cuda_version,
                    torch_version=torch_version,
                    gpu_uuids=",".join(gpu_uuids),
                    started_at=now,
                    end_reason="",
                )
            )
            return inserted_id(result)

    def end(self, user: str, server: str, reason: str) -> int:
        """Close this server's open session(s); returns how many were open."""
        with self.writer.begin() as conn:
            result = conn.execute(
                update(_sessions)
                .where(_sessions.c.user == user, _sessions.c.server == server, _sessions.c.ended_at.is_(None))
                .values(ended_at=self._clock(), end_reason=reason)
            )
            return result.rowcount

    def sessions(self, since: datetime | None = None, user: str | None = None) -> list[Session]:
        """Sessions that were running at or after ``since``, oldest first."""
        query = select(_sessions).order_by(_sessions.c.started_at, _sessions.c.id)
        if since is not None:
            query = query.where((_sessions.c.ended_at.is_(None)) | (_sessions.c.ended_at >= since))
        if user is not None:
            query = query.where(_sessions.c.user == user)
        with self.reader.connect() as conn:
            return [_session(r) for r in conn.execute(query).all()]
