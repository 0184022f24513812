"""Registering a user's SSH key: the line checked (:mod:`labgpu.ssh.keys`), then stored
(:mod:`labgpu.db.ssh_key_store`). The one path the "SSH keys" page and ``labgpu ssh-keys add`` share."""

from __future__ import annotations

from labgpu.db.ssh_key_store import SshKey, SshKeyStore
from labgpu.ssh.keys import parse_public_key


def register_key(store: SshKeyStore, user: str, line: str) -> SshKey:
    """Add the public key on ``line`` to ``user``'s keys. ValueError (``BadKey``,
    ``SshKeyRefused``) with a message for the user when the line is not a key we accept or
    they have it already."""
    key = parse_public_key(line)
    return store.add(
        user, fingerprint=key.fingerprint, algorithm=key.algorithm, public_key=key.openssh, comment=key.comment
    )
