"""GPUDockerSpawner: DockerSpawner with quotas, exclusive GPUs, a fair-share queue, per-user
homes, group shared folders, a real /dev/shm, labels and hardening.

What is not Docker's (the quota policy, the spawn form, the GPU ledger and queue, sessions) is
:class:`labgpu.hub.gpu_spawn.GpuSpawnPolicy`, shared with the Kubernetes spawner; releasing GPUs
only once the container is gone is :mod:`labgpu.hub.lifecycle`. This module gathers the
container's inputs and talks to Docker; what the container looks like is decided by
:func:`labgpu.hub.containers.container_config`.

Nothing here blocks the hub's event loop: Docker calls go through DockerSpawner's executor
(``self.docker(...)``), and ledger, session and quota-file work through ``self.blocking``,
a small executor of our own, so that a long image pull never delays a ledger read.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, ClassVar

from docker.errors import APIError, NotFound
from dockerspawner import DockerSpawner
from jupyterhub.spawner import SpawnException
from traitlets import CaselessStrEnum, Unicode, default

from labgpu.hub import image_info
from labgpu.hub.containers import ContainerConfigError, WorkspaceSpec, container_config, render_templates
from labgpu.hub.gpu_spawn import SIMULATED_NOTICE as SIMULATED_NOTICE  # re-exported: tests and pages read it
from labgpu.hub.gpu_spawn import GpuSpawnPolicy
from labgpu.hub.lifecycle import GpuLifecycleSpawner
from labgpu.hub.shared_folders import prepare_shared_folders, shared_folder_binds
from labgpu.quota import Limits
from labgpu.quota.volumes import group_volume_name


class GPUDockerSpawner(GpuSpawnPolicy, GpuLifecycleSpawner):
    """Spawn each user's JupyterLab in its own hardened Docker container.

    Registered as the ``labgpu`` spawner: ``c.JupyterHub.spawner_class = "labgpu"``.
    """

    home_volume = Unicode(
        "labgpu-home-{username}",
        help="""Docker volume holding the user's persistent home, mounted at `home_mount`.

        Templated like DockerSpawner's volumes ({username} is the escaped user name). One
        volume per user, shared by the user's named servers; it outlives every container.
        """,
    ).tag(config=True)

    gpu_driver = CaselessStrEnum(
        ["nvidia", "cdi", "simulated"],
        default_value="nvidia",
        help="""How GPUs reach a container: "nvidia" = DeviceRequests with the GPUs' UUIDs (NVIDIA
        Container Toolkit); "cdi" = CDI device names nvidia.com/gpu=<UUID> (Docker 25+ with CDI);
        "simulated" = no device, only LABGPU_GPUS / NVIDIA_VISIBLE_DEVICES and the labels (simulated
        GPUs, LABGPU_GPU_SOURCE=simulated:PRESET: the demo and tests; production mode refuses it).""",
    ).tag(config=True)

    _host_cpus: ClassVar[int | None] = None

    @default("remove")
    def _default_remove(self) -> bool:
        # A fresh container every start: GPU, image and limit changes always apply, and the
        # home volume keeps the user's data.
        return True

    @default("image")
    def _default_image(self) -> str:
        return "labgpu/workspace:local"

    # --- what GpuSpawnPolicy asks of the backend ---------------------------------------------

    def gpus_simulated(self) -> bool:
        return bool(self.gpu_driver == "simulated")

    def plain_options_form(self) -> Any:
        return DockerSpawner._default_options_form(self)  # DockerSpawner's form (its allowed_images)

    async def image_versions(self, limits: Limits) -> Mapping[str, str | None] | None:
        choices = [(c.name, c.image) for c in limits.images]
        return await image_info.image_versions(lambda ref: self.docker("inspect_image", ref), choices)

    def plain_options_from_form(self) -> Callable[[dict[str, list[str]]], dict[str, Any]]:
        return DockerSpawner._default_options_from_form(self)  # type: ignore[no-any-return]

    def home_volume_name(self) -> str:
        return str(self.format_volume_name(self.home_volume, self))

    def workload_id(self) -> str:
        return str(self.container_id)

    async def workload_image_info(self) -> Mapping[str, Any] | None:
        info: Mapping[str, Any] = await self.docker("inspect_image", self.image)
        return info

    async def start_failure(self, error: BaseException) -> BaseException | None:
        if isinstance(error, APIError):  # from DockerSpawner's own steps (pull, inspect): say what to do
            failure: BaseException = await self._start_failure(error)
            return failure
        return None

    async def check_allowed(self, image: str) -> str:
        # The policy already chose and checked the image (DockerSpawner would look the policy's
        # image *name* up in allowed_images).
        if self.spawn_request is not None:
            return str(self.image)
        return str(await super().check_allowed(image))

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        """Spawn-page events: queue position, whose GPUs it waits for, the estimated wait."""
        async for event in self.gpu_progress():
            yield event

    def shared_folders(self) -> dict[str, dict[str, str]]:
        """The user's groups' shared folders: each one's volume (``<hub_id>-group-<name>``) at /shared/<group>."""
        return shared_folder_binds(self.limits.shared_volumes if self.limits else {}, self.hub_id)

    async def admin_extras(self, value: Any) -> dict[str, Any]:
        """An admin's ``extra_create_kwargs`` / ``extra_host_config``: called with the spawner if
        callable (and awaited if that returns an awaitable), then templated as DockerSpawner does."""
        if callable(value):
            value = value(self)
        if inspect.isawaitable(value):
            value = await value
        return dict(render_templates(value or {}, self.template_namespace()))

    def workspace_spec(
        self,
        environment: dict[str, str],
        command: list[str] | None,
        *,
        host_cpus: int | None = None,
        extra_create_kwargs: Mapping[str, Any] | None = None,
        extra_host_config: Mapping[str, Any] | None = None,
    ) -> WorkspaceSpec:
        """Gather this spawn's inputs into the plain description the builder takes (no I/O:
        what needs Docker or an admin's callable is fetched by :meth:`create_object`)."""
        volumes = {self.home_volume_name(): {"bind": self.home_mount, "mode": "rw"}}
        volumes.update(self.shared_folders())
        volumes.update(self.volume_binds)
        return WorkspaceSpec(
            name=self.container_name,
            image=self.image,
            user=self.user.name,
            server=self.name or "",
            hub_id=self.hub_id,
            environment=environment,
            command=command,
            port=self.port,
            volumes=volumes,
            run_as_uid=self.run_as_uid,
            run_as_gid=self.run_as_gid,
            shm_size=int(self.shm_size),
            mem_limit=int(self.mem_limit) if self.mem_limit else None,
            mem_reservation=int(self.mem_guarantee) if self.mem_guarantee else None,
            cpu_limit=float(self.cpu_limit) if self.cpu_limit else None,
            pids_limit=self.pids_limit,
            host_cpus=host_cpus,
            network=self.network_name,
            publish_on=None if self.use_internal_ip else self.host_ip,
            auto_remove=self.remove,
            extra_create_kwargs=extra_create_kwargs or {},
            extra_host_config=extra_host_config or {},
            mounts=tuple(self.mount_binds),
            gpu_uuids=tuple(self.gpu_uuids),
            gpu_driver=self.gpu_driver,
        )

    async def docker_host_cpus(self) -> int | None:
        """CPUs of the Docker host (Docker refuses a CPU limit above it), asked once per hub."""
        cls = type(self)
        if cls._host_cpus is None:
            try:
                info = await self.docker("info")
                cls._host_cpus = int(info.get("NCPU") or 0) or None
            except (APIError, ValueError):
                return None
        return cls._host_cpus

    def shared_folder_names(self) -> dict[str, str]:
        folders = self.limits.shared_volumes if self.limits else {}
        return {group_volume_name(self.hub_id, f): f for f in folders.values()}

    async def create_object(self) -> dict[str, Any]:
        """Create the container from :func:`container_config` (replaces DockerSpawner's)."""
        ids = await self.workspace_user()
        try:
            await prepare_shared_folders(
                self.docker,
                self.client.create_host_config,
                self.shared_folders(),
                image=self.image,
                uid=ids.uid,
                gid=ids.gid,
                home_volume=self.home_volume_name(),
                home_mount=self.home_mount,
                folder_gids=ids.folder_gids,
                own_home=ids.uid != self.run_as_uid,
            )
        except APIError as e:
            raise self._docker_failure("prepare the shared folders of", e) from None
        spec = self.workspace_spec(
            {**self.get_env(), **(ids.environment(self.user.name) if ids.uid != self.run_as_uid else {})},
            await self.get_command(),
            host_cpus=await self.docker_host_cpus() if self.cpu_limit else None,
            extra_create_kwargs=await self.admin_extras(self.extra_create_kwargs),
            extra_host_config=await self.admin_extras(self.extra_host_config),
        )
        spec = dataclasses.replace(spec, run_as_uid=ids.uid, run_as_gid=ids.gid, group_add=ids.group_add)
        try:
            create_kwargs, host_config = container_config(spec)
        except ContainerConfigError as e:
            raise SpawnException(
                f"This workspace cannot be started: {e}. Ask the hub's admin to fix the configuration.",
                reason="config",
                status_code=500,
            ) from None
        create_kwargs["host_config"] = self.client.create_host_config(**host_config)
        self.log.debug("Creating %s with %s", spec.name, create_kwargs)
        try:
            created: dict[str, Any] = await self.docker("create_container", **create_kwargs)
            return created
        except APIError as e:
            raise self._docker_failure("create", e) from None

    async def start_object(self) -> None:
        try:
            await super().start_object()
        except APIError as e:
            raise self._docker_failure("start", e) from None

    async def _start_failure(self, error: APIError) -> SpawnException:
        """A Docker error from DockerSpawner's start as a message. (pull_image keeps raising
        Docker's errors, e.g. NotFound with pull_policy "never": DockerSpawner's contract.)"""
        try:
            await self.docker("inspect_image", self.image)
        except NotFound:
            return SpawnException(
                f"The workspace image {self.image!r} is not on this server. An admin can build it "
                "with scripts/build-images.sh or pull it, or pick another image.",
                reason="image",
                status_code=500,
            )
        except APIError:
            pass
        return self._docker_failure("start", error)

    def _docker_failure(self, action: str, error: APIError) -> SpawnException:
        """A Docker error as a message the user and the admin can act on (no traceback)."""
        detail = error.explanation or str(error)
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        if "could not select device driver" in detail:
            detail += (
                ". This Docker engine cannot give containers GPUs: the admin must install the NVIDIA "
                "Container Toolkit (or enable CDI). Until then, start a server with 0 GPUs"
            )
        return SpawnException(
            f"Docker could not {action} your workspace: {detail}",
            reason="docker",
            log_message=f"docker {action} failed for {self.server_label}: {detail}",
            status_code=500,
        )
