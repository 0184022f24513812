"""When a server's GPUs go back to the ledger: only once Docker confirms its container is gone.

A GPU released while the container using it still runs can be granted to another user who
then finds it busy (or shares it). So stop, poll and a failed start release a server's GPUs
only when Docker says its container does not exist, or exists but no longer runs (not one of
:data:`labgpu.gpus.reconcile.ALIVE_STATES`: no process in it can use a GPU). When Docker's stop
or remove fails, or Docker cannot tell, the GPUs stay held and the hub's log says so; a watch
in the hub process retries the stop and releases them once the container is gone (a hub
restart's reconcile does the same), and a new start of that server first waits for it.

:class:`GpuLifecycle` is that stop, poll and release for any backend, which tells it whether a
workload is gone (:meth:`GpuLifecycle.check_workload`) and how to stop one again
(:meth:`GpuLifecycle.stop_workload_again`); :class:`GpuLifecycleSpawner` is DockerSpawner with
it (a container), ``labgpu.kube.spawner.GPUKubeSpawner`` KubeSpawner with it (a pod). The
spawner provides what it uses: ``ledger``, ``blocking``, ``shared_gpu_queue``, ``end_session``
and ``server_label`` (:class:`labgpu.hub.gpu_spawn.GpuSpawnPolicy`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from docker.errors import APIError
from dockerspawner import DockerSpawner
from jupyterhub.spawner import SpawnException
from traitlets import Float

from labgpu.gpus.allocator import Allocation
from labgpu.gpus.reconcile import ALIVE_STATES
from labgpu.hub import gpu_queue

if TYPE_CHECKING:  # for mypy, a Spawner: the backend's attributes (user, name, image, ...) are there
    from jupyterhub.spawner import Spawner as SpawnerMixinBase
else:  # at run time a mixin: JupyterHub refuses a Spawner subclass without its own start, stop and poll
    from traitlets.config import LoggingConfigurable as SpawnerMixinBase

DockerCall = Callable[..., Awaitable[Any]]  # DockerSpawner.docker: a docker-py method by name, off the loop

MAX_RETRY_INTERVAL = 600.0  # seconds: the watch's retries back off to one every 10 minutes


@dataclass(frozen=True)
class ContainerCheck:
    """What Docker says about a container: is it gone (GPUs free to release), and why."""

    gone: bool
    detail: str  # "not found", its state ("exited", "running"), or why Docker could not say


def docker_error(error: BaseException) -> str:
    """A Docker error in one line: Docker's own explanation when it gave one."""
    detail = getattr(error, "explanation", None) or str(error) or type(error).__name__
    return detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)


async def check_container(docker: DockerCall, container: str) -> ContainerCheck:
    """Ask Docker about ``container`` (id or name). Gone: not found, or not running; anything
    Docker cannot answer (an error, the engine down) counts as still there."""
    if not container:
        return ContainerCheck(True, "no container")
    try:
        info = await docker("inspect_container", container)
    except APIError as e:
        if e.status_code == 404:
            return ContainerCheck(True, "not found")
        return ContainerCheck(False, f"Docker could not say whether it is gone: {docker_error(e)}")
    except Exception as e:
        return ContainerCheck(False, f"Docker could not say whether it is gone: {docker_error(e)}")
    if not info:
        return ContainerCheck(True, "not found")
    state = str((info.get("State") or {}).get("Status", "")).lower()
    return ContainerCheck(state not in ALIVE_STATES, state or "unknown state")


@dataclass
class KeptGpus:
    """GPUs of a server whose container could not be confirmed gone, and the watch releasing them."""

    allocation: Allocation
    container: str
    why: str
    watch: asyncio.Task[None] | None = None


def short_id(container: str) -> str:
    return container[:12]


class GpuLifecycle(SpawnerMixinBase):  # type: ignore[misc]  # JupyterHub's Spawner ships no types
    """A spawner whose servers give their GPUs back only once their workload is gone."""

    gpu_release_retry_interval = Float(
        30.0,
        help="""Seconds before the hub tries again to stop a container whose stop failed (its GPUs
        stay held until it is gone); the interval doubles after each failure, up to 10 minutes.""",
    ).tag(config=True)

    gpu_uuids: tuple[str, ...] = ()  # the GPUs this server was granted (set by GpuSpawnPolicy.start)
    # Servers whose GPUs are kept for a container that could not be stopped, in this hub process.
    kept_gpus: ClassVar[dict[tuple[str, str], KeptGpus]] = {}

    @property
    def server_key(self) -> tuple[str, str]:
        return (self.user.name, self.name or "")

    def workload_name(self) -> str:
        """This server's workload as the backend finds it even once its id is forgotten."""
        raise NotImplementedError

    async def check_workload(self, workload: str) -> ContainerCheck:
        """Is ``workload`` gone (its GPUs free to release)? Anything unsure counts as still there."""
        raise NotImplementedError

    async def stop_workload_again(self, workload: str) -> str | None:
        """Try once more to stop (and remove) ``workload``; why it failed, or None."""
        raise NotImplementedError

    async def stop(self, now: bool = False) -> None:
        if self.ledger is not None:  # stopped while waiting for GPUs: leave the queue
            await self.shared_gpu_queue().leave(self.user.name, self.name or "", "server stopped while waiting")
        container = self.workload_name()
        try:
            await super().stop(now=now)
        except Exception as e:
            await self.release_gpus("stopped", container=container, failure=f"could not be stopped ({docker_error(e)})")
            raise
        else:
            await self.release_gpus("stopped", container=container)
        finally:
            await self.end_session("stopped")

    async def poll(self) -> int | None:
        status: int | None = await super().poll()
        if status is not None and self.ledger is not None and self.pending != "spawn":
            await self.release_gpus(f"container gone ({status})")
            await self.end_session(f"container gone ({status})")
        return status

    async def release_gpus(self, reason: str, *, container: str | None = None, failure: str | None = None) -> None:
        """Release this server's GPUs if Docker confirms its container is gone (``container``:
        its id or name, default this server's); otherwise keep them, say so in the log, and
        watch the container until it is gone. ``failure``: why it may still run (a failed stop)."""
        self.gpu_uuids = ()
        the_ledger = self.ledger
        if the_ledger is None:
            return
        held = await self.blocking(the_ledger.allocation_for, self.user.name, self.name or "")
        if held is None or not held.gpu_uuids:
            return
        container = container or self.workload_name()
        check = await self.check_workload(container)
        if check.gone:
            await self.release_held(held, f"{reason} (container {check.detail})" if failure else reason)
            return
        if failure:
            why = failure
        elif "could not say" in check.detail:
            why = f"may still run ({check.detail})"
        else:
            why = f"is still {check.detail}"
        self.keep_gpus(held, container, why)

    async def release_held(self, held: Allocation, reason: str) -> None:
        """Release exactly this allocation (not a newer one of the server) and wake the queue."""
        released = await self.blocking(self.ledger.release, held.user, held.server, reason, granted_at=held.since)
        kept = self.kept_gpus.get(self.server_key)
        if kept is not None and kept.allocation == held:
            del self.kept_gpus[self.server_key]
            if kept.watch is not None and kept.watch is not asyncio.current_task():
                kept.watch.cancel()
        if released is not None:
            self.log.info("Released %s of %s: %s", ", ".join(released.gpu_uuids), self.server_label, reason)
            gpu_queue.notify_released(self.ledger)  # waiting spawns try at once

    def keep_gpus(self, held: Allocation, container: str, why: str) -> None:
        """Keep the GPUs of a container that may still run, say so, and watch it until it is gone."""
        self.log.warning(
            "GPUs of %s kept: container %s %s; they are released when it is gone (%s)",
            self.server_label,
            short_id(container),
            why,
            ", ".join(held.gpu_uuids),
        )
        previous = self.kept_gpus.get(self.server_key)
        if previous is not None and previous.watch is not None and not previous.watch.done():
            if previous.allocation == held:
                return  # already watched
            previous.watch.cancel()
        kept = KeptGpus(held, container, why)
        self.kept_gpus[self.server_key] = kept
        kept.watch = asyncio.ensure_future(self.watch_kept(kept))

    async def stop_kept_container(self, kept: KeptGpus) -> ContainerCheck:
        """Try once more what the stop should have done (stop, and remove if the hub removes its
        containers), then ask whether the container is gone."""
        failure = await self.stop_workload_again(kept.container)
        if failure is not None:
            kept.why = f"could not be stopped ({failure})"
        return await self.check_workload(kept.container)

    async def watch_kept(self, kept: KeptGpus) -> None:
        """Retry the stop with a growing interval; release the GPUs once the container is gone."""
        delay = self.gpu_release_retry_interval
        while True:
            await asyncio.sleep(delay)
            check = await self.stop_kept_container(kept)
            if check.gone:
                await self.release_held(
                    kept.allocation, f"container {short_id(kept.container)} gone after a failed stop"
                )
                return
            delay = min(2 * delay, MAX_RETRY_INTERVAL)
            self.log.warning(
                "GPUs of %s still kept: container %s %s; next try in %.0f s",
                self.server_label,
                short_id(kept.container),
                kept.why,
                delay,
            )

    async def settle_kept_gpus(self) -> None:
        """Before this server starts again: the container that kept its GPUs must be gone (one
        more try now), else the start is refused with what to do (HTTP 503)."""
        kept = self.kept_gpus.get(self.server_key)
        if kept is None:
            return
        check = await self.stop_kept_container(kept)
        if check.gone:
            await self.release_held(kept.allocation, f"container {short_id(kept.container)} gone after a failed stop")
            return
        raise SpawnException(
            f"Your previous server's container {short_id(kept.container)} {kept.why}, so its GPUs are still "
            "held. The hub keeps trying and releases them once it is gone: try again in a few minutes, "
            "or ask an admin to remove the container.",
            reason="capacity",
            status_code=503,
        )


class GpuLifecycleSpawner(GpuLifecycle, DockerSpawner):  # type: ignore[misc]  # DockerSpawner ships no types
    """DockerSpawner whose servers give their GPUs back only once their container is gone."""

    def workload_name(self) -> str:
        return str(self.container_id or self.container_name)  # DockerSpawner forgets the id once removed

    async def check_workload(self, workload: str) -> ContainerCheck:
        return await check_container(self.docker, workload)

    async def stop_workload_again(self, workload: str) -> str | None:
        try:
            if self.remove:
                await self.docker("remove_container", workload, force=True, v=True)
            else:
                await self.docker("stop", workload)
        except APIError as e:
            if e.status_code != 404:
                return docker_error(e)
        except Exception as e:
            return docker_error(e)
        return None
