"""The Profile column of JupyterHub 6's admin page, which shows ``user_options["profile"]`` of
each server (jupyterhub/static/js/admin-react.js: ``r.user_options && r.user_options.profile``):
the hub writes what a spawn was granted there (``2 GPUs · 16G · pytorch``), beside the options
the user chose. labgpu.quota.spawn_options ignores the key when a saved choice comes back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def record_profile(orm_spawner: Any, options: Mapping[str, Any] | None, profile: str) -> None:
    """Save ``profile`` in the server's persisted user_options (committed with the spawn)."""
    if orm_spawner is None:
        return
    saved = dict(getattr(orm_spawner, "user_options", None) or options or {})
    if saved.get("profile") == profile:
        return
    saved["profile"] = profile
    orm_spawner.user_options = saved  # a new dict, so that SQLAlchemy sees the change
