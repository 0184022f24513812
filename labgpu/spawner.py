"""GPUDockerSpawner: DockerSpawner with per-user homes, a real /dev/shm, labels and hardening.

The spawner only gathers inputs (traits, the user, the hub's environment) and talks to
Docker; what the container looks like is decided by :func:`labgpu.containers.container_config`.
"""

from __future__ import annotations

from docker.errors import APIError, NotFound
from dockerspawner import DockerSpawner
from jupyterhub.spawner import SpawnException
from jupyterhub.traitlets import ByteSpecification
from traitlets import Integer, Unicode, default, validate

from .containers import ContainerConfigError, WorkspaceSpec, container_config


class GPUDockerSpawner(DockerSpawner):
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

    home_mount = Unicode(
        "/home/jovyan",
        help="Where the home volume is mounted in the workspace (the image user's home).",
    ).tag(config=True)

    shm_size = ByteSpecification(
        "2G",
        help="""Size of /dev/shm in the workspace, e.g. '2G'.

        Docker's default of 64 MB makes PyTorch DataLoader workers fail with
        "bus error" / "unable to write to file </torch_...>".
        """,
    ).tag(config=True)

    pids_limit = Integer(
        4096,
        help="Maximum number of processes in a workspace (a fork bomb stays inside it).",
    ).tag(config=True)

    run_as_uid = Unicode(
        "1000",
        help="Numeric uid the workspace runs as; never 0 (root). The image's jovyan is 1000.",
    ).tag(config=True)

    run_as_gid = Unicode("100", help="Numeric gid the workspace runs as.").tag(config=True)

    hub_id = Unicode(
        "labgpu",
        help="""Name of this hub, written into every container's labels.

        Lets several hubs share one Docker engine and lets a hub find (and reconcile) its
        own containers after a crash.
        """,
    ).tag(config=True)

    @validate("run_as_uid")
    def _validate_uid(self, proposal):
        uid = proposal.value
        if not uid.isdigit() or int(uid) == 0:
            raise ValueError(f"run_as_uid must be a non-zero numeric uid (got {uid!r})")
        return uid

    @default("remove")
    def _default_remove(self):
        # A fresh container every start: GPU, image and limit changes always apply, and the
        # home volume keeps the user's data.
        return True

    @default("image")
    def _default_image(self):
        return "labgpu/workspace:local"

    def workspace_spec(self, environment: dict, command: list[str] | None) -> WorkspaceSpec:
        """Gather this spawn's inputs into the plain description the builder takes."""
        volumes = {self.format_volume_name(self.home_volume, self): {"bind": self.home_mount, "mode": "rw"}}
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
            cpu_limit=float(self.cpu_limit) if self.cpu_limit else None,
            pids_limit=self.pids_limit,
            network=self.network_name,
            publish_on=None if self.use_internal_ip else self.host_ip,
            auto_remove=self.remove,
            extra_create_kwargs=self._render_templates(self._eval_if_callable(self.extra_create_kwargs)),
            extra_host_config=self._render_templates(self._eval_if_callable(self.extra_host_config)),
        )

    async def create_object(self):
        """Create the container from :func:`container_config` (replaces DockerSpawner's)."""
        spec = self.workspace_spec(self.get_env(), await self.get_command())
        try:
            create_kwargs, host_config = container_config(spec)
        except ContainerConfigError as e:
            raise SpawnException(
                f"This workspace cannot be started: {e}. Ask the hub's admin to fix the configuration.",
                reason="config",
                status_code=500,
            ) from None
        if self.mount_binds:
            host_config["mounts"] = self.mount_binds
        create_kwargs["host_config"] = self.client.create_host_config(**host_config)
        self.log.debug("Creating %s with %s", spec.name, create_kwargs)
        try:
            return await self.docker("create_container", **create_kwargs)
        except APIError as e:
            raise self._docker_failure("create", e) from None

    async def start_object(self):
        try:
            await super().start_object()
        except APIError as e:
            raise self._docker_failure("start", e) from None

    async def pull_image(self, image):
        try:
            await super().pull_image(image)
        except NotFound:
            raise SpawnException(
                f"The workspace image {image!r} is not on this server. An admin can build it "
                "with scripts/build-images.sh or pull it, or pick another image.",
                reason="image",
                status_code=500,
            ) from None
        except APIError as e:
            raise self._docker_failure(f"pull image {image!r} for", e) from None

    def _docker_failure(self, action: str, error: APIError) -> SpawnException:
        """A Docker error as a message the user and the admin can act on (no traceback)."""
        detail = error.explanation or str(error)
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        return SpawnException(
            f"Docker could not {action} your workspace: {detail}",
            reason="docker",
            log_message=f"docker {action} failed for {self.user.name}/{self.name or ''}: {detail}",
            status_code=500,
        )
