"""Workspace sessions in the ledger's SQLite file, for reproducibility: which image (reference
and digest), which NVIDIA driver and CUDA version, which GPUs, from when to when. The only
code that reads or writes the ``sessions`` table (Alembic revision 0005)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Index, Integer, String, Text, insert, select, update
from sqlalchemy.orm import Mapped, mapped_column

from labgpu.db.ledger import Base, Ledger, UtcDateTime, ledger_engine
from labgpu.labels import server_label

# ============================================================================================
# Table (migration: labgpu/db/migrations/versions/0005_sessions.py)
# ============================================================================================


class SessionRow(Base):
    """One run of a workspace container: what it ran on, for reproducing its results."""

    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_user_server", "user", "server"), Index("ix_sessions_started", "started_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(255))
    server: Mapped[str] = mapped_column(String(255))
    container_id: Mapped[str] = mapped_column(String(64))
    image: Mapped[str] = mapped_column(Text)  # the reference the user chose
    image_digest: Mapped[str] = mapped_column(Text)  # repo digest if pulled, else the image id
    driver_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cuda_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    torch_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    gpu_uuids: Mapped[str] = mapped_column(Text, default="")  # comma-separated
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    end_reason: Mapped[str] = mapped_column(Text, default="")


_sessions = SessionRow.__table__


@dataclass(frozen=True)
class Session:
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


def _session(row) -> Session:
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


class SessionStore:
    """Open and close sessions; list them for `labgpu usage --sessions`. Safe across processes."""

    def __init__(self, ledger: Ledger, *, clock: Callable[[], datetime] | None = None):
        self._write = ledger_engine(ledger.url, immediate=True)
        self._read = ledger_engine(ledger.url, immediate=False)
        self._clock = clock or (lambda: datetime.now(UTC))

    def close(self) -> None:
        self._write.dispose()
        self._read.dispose()

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
        with self._write.begin() as conn:
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
            return int(result.inserted_primary_key[0])

    def end(self, user: str, server: str, reason: str) -> int:
        """Close this server's open session(s); returns how many were open."""
        with self._write.begin() as conn:
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
        with self._read.connect() as conn:
            return [_session(r) for r in conn.execute(query).all()]
