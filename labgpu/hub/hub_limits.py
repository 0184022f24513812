"""Limits JupyterHub itself applies around spawns, made to agree with the quota policy and the
GPU queue.

- ``c.JupyterHub.named_server_limit_per_user`` is :func:`named_server_limit`: each user's
  ``named_servers`` from the policy in force (JupyterHub shows it on the home page and refuses
  to create more named servers than that; the spawner still refuses to *run* more).
- ``c.JupyterHub.concurrent_spawn_limit`` counts every pending spawn, and a spawn waiting in the
  GPU queue stays pending for hours: a long queue would turn every CPU spawn away with "Too many
  users trying to log in right now". So ``jupyterhub_config.py`` moves that number here
  (:data:`container_starts`) and turns JupyterHub's count off: the spawner holds one of these
  slots only while it creates and starts its container (:func:`start_slot`), after any wait for
  GPUs, which is what the limit protects (the Docker engine, the hub). A spawn over the limit
  waits for a slot, within its start timeout, instead of being refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from labgpu.quota import PolicyStore, resolve


def named_server_limit(store: PolicyStore) -> Callable[[Any], int]:
    """A ``c.JupyterHub.named_server_limit_per_user`` callable: the current user's
    ``named_servers`` (JupyterHub asks it with the request's handler; 0 = JupyterHub sets no
    limit, and the spawner refuses every named server of a user whose policy allows none)."""

    def limit(handler: Any) -> int:
        user = handler.current_user
        if user is None or not hasattr(user, "groups"):  # a service's token: no servers of its own
            return 0
        return resolve(store.policy, user.name, [g.name for g in user.groups]).named_servers

    return limit


@dataclass
class ContainerStarts:
    """How many spawns may create and start containers at once (0: no limit)."""

    limit: int = 100  # JupyterHub's default concurrent_spawn_limit
    _slots: asyncio.Semaphore | None = field(default=None, repr=False)

    def slots(self) -> asyncio.Semaphore | None:
        if self.limit <= 0:
            return None
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        return self._slots


container_starts = ContainerStarts()


@contextlib.asynccontextmanager
async def start_slot() -> AsyncIterator[None]:
    """Hold one of :data:`container_starts`' slots (waiting for one if all are taken)."""
    slots = container_starts.slots()
    if slots is None:
        yield
        return
    async with slots:
        yield
