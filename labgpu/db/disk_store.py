"""The last measured size of each home and group folder volume: the only code that reads or
writes the ``volume_sizes`` table (:mod:`labgpu.db.tables`, Alembic revision 0007). The disk-usage
service records a round of measurements; the hub reads a user's volumes at every spawn."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from sqlalchemy import delete, select

from labgpu.db.engine import Clock, Store, upsert
from labgpu.db.tables import VolumeSizeRow
from labgpu.quota.volumes import VolumeSize

_sizes = VolumeSizeRow.__table__


class VolumeSizeStore(Store):
    """Volume sizes, shared by the service that measures them and the hub. Safe across processes."""

    def __init__(self, url_or_path: str | Path, *, clock: Clock | None = None, migrate: bool = True) -> None:
        super().__init__(url_or_path, clock=clock, migrate=migrate)

    def record(self, sizes: Mapping[str, int], prefixes: Sequence[str]) -> None:
        """One round of measurements: ``sizes`` of every volume whose name starts with one of
        ``prefixes`` (the hub's homes and folders); volumes of those prefixes that are gone are
        forgotten, other hubs' volumes are left alone."""
        now = self._clock()
        with self.writer.begin() as conn:
            known = conn.execute(select(_sizes.c.volume)).scalars().all()
            gone = [v for v in known if v.startswith(tuple(prefixes)) and v not in sizes]
            if gone:
                conn.execute(delete(_sizes).where(_sizes.c.volume.in_(gone)))
            if sizes:
                upsert(conn, _sizes, [{"volume": v, "size": size, "measured_at": now} for v, size in sizes.items()])

    def sizes(self, volumes: Iterable[str] | None = None) -> dict[str, VolumeSize]:
        """The last measurement of each of ``volumes`` that has one (all of them: None)."""
        query = select(_sizes).order_by(_sizes.c.volume)
        if volumes is not None:
            query = query.where(_sizes.c.volume.in_(list(volumes)))
        with self.reader.connect() as conn:
            return {r.volume: VolumeSize(r.volume, r.size, r.measured_at) for r in conn.execute(query).all()}
