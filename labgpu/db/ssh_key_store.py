"""Users' SSH public keys: the only code that reads or writes the ``ssh_keys`` table
(:mod:`labgpu.db.tables`, Alembic revision 0008). The "SSH keys" page and ``labgpu ssh-keys``
add and remove them (checked by :mod:`labgpu.ssh.keys` first); the SSH gateway reads a user's
keys at each login and notes when one was last used."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, func, insert, select, update

from labgpu.db.engine import Clock, Store, inserted_id
from labgpu.db.tables import SshKeyRow

_keys = SshKeyRow.__table__
MAX_KEYS_PER_USER = 50


class SshKeyRefused(ValueError):
    """A key that cannot be added (already there, too many); the message says what to do."""


@dataclass(frozen=True)
class SshKey:
    """A registered key, as the page lists it."""

    id: int
    user: str
    fingerprint: str
    algorithm: str
    public_key: str  # "TYPE BASE64"
    comment: str
    added_at: datetime
    last_used_at: datetime | None


_COLUMNS = [f.name for f in fields(SshKey) if f.name != "id"]


class SshKeyStore(Store):
    """Registered SSH keys. Safe across processes (the hub's web service, the gateway, the CLI)."""

    lock = "ssh_keys"  # its own writer lock: adding a key never waits for a GPU grant

    def __init__(self, url_or_path: str | Path, *, clock: Clock | None = None, migrate: bool = True) -> None:
        super().__init__(url_or_path, clock=clock, migrate=migrate)

    def add(
        self, user: str, *, fingerprint: str, algorithm: str, public_key: str, comment: str = "", limit: int = 0
    ) -> SshKey:
        """Register a key for ``user``; :class:`SshKeyRefused` if they or another user have it
        already (the gateway reads a dotted login name as whoever owns the key, and public keys
        are public) or they have ``limit`` keys (default :data:`MAX_KEYS_PER_USER`)."""
        limit = limit or MAX_KEYS_PER_USER
        now = self.now()
        with self.writer.begin() as conn:
            mine = _keys.c.user == user
            owner = conn.execute(select(_keys.c.user).where(_keys.c.fingerprint == fingerprint)).first()
            if owner is not None and owner.user == user:
                raise SshKeyRefused(f"this key ({fingerprint}) is registered already")
            if owner is not None:  # a dotted login goes to whose key it is: one owner per key
                raise SshKeyRefused(f"this key ({fingerprint}) is registered to another account")
            count = conn.execute(select(func.count()).select_from(_keys).where(mine)).scalar_one()
            if count >= limit:
                raise SshKeyRefused(f"you have {count} keys, the most one may register: remove one first")
            key = SshKey(0, user, fingerprint, algorithm, public_key, comment, added_at=now, last_used_at=None)
            values = {name: getattr(key, name) for name in _COLUMNS}
            key_id = inserted_id(conn.execute(insert(_keys).values(**values)))
        return replace(key, id=key_id)

    def keys(self, user: str) -> list[SshKey]:
        """The user's keys, oldest first."""
        query = select(_keys).where(_keys.c.user == user).order_by(_keys.c.added_at, _keys.c.id)
        with self.reader.connect() as conn:
            return [SshKey(**row._asdict()) for row in conn.execute(query).all()]

    def remove(self, user: str, fingerprint: str) -> bool:
        """Remove one of the user's keys by fingerprint; False if they have no such key."""
        with self.writer.begin() as conn:
            result = conn.execute(delete(_keys).where(_keys.c.user == user, _keys.c.fingerprint == fingerprint))
        return bool(result.rowcount)

    def mark_used(self, user: str, fingerprint: str) -> None:
        """Note that the key just let its user in (the page shows when each key was last used)."""
        with self.writer.begin() as conn:
            conn.execute(
                update(_keys)
                .where(_keys.c.user == user, _keys.c.fingerprint == fingerprint)
                .values(last_used_at=self.now())
            )
