"""What every LabGPU spawner does, whatever runs the workspace (Docker or Kubernetes).

:class:`GpuSpawnPolicy` holds the quota policy (resolve the user's limits, the spawn form,
``user_options`` validation and refusals), the GPU grant (the ledger, the fair-share queue and
its progress events), and the session record. A backend (``GPUDockerSpawner``,
``GPUKubeSpawner``) puts it first among its bases and adds only the workload: how a grant
becomes a container or a pod, and how it is started, stopped and polled.

A backend provides these hooks: :meth:`gpus_simulated`, :meth:`plain_options_form` and
:meth:`plain_options_from_form` (its own form when no policy is configured),
:meth:`home_volume_name`, :meth:`workload_id` (what the ledger records as the holder of the
GPUs), :meth:`workload_image_info` (for the session record), :meth:`prepare_workload` (what it
does with a grant before its own start) and :meth:`start_failure` (its errors as a message).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from jupyterhub.spawner import SpawnException
from jupyterhub.traitlets import ByteSpecification
from traitlets import Bool, CaselessStrEnum, Float, Integer, List, Unicode, default, validate

from labgpu.db.ledger import Ledger
from labgpu.gpus.allocator import GpuLimitExceeded, NotEnoughGpus
from labgpu.hub import disk_quota, event_log, gpu_queue, hub_limits, sessions
from labgpu.hub import resources as hub_resources
from labgpu.hub.admin_profile import record_profile
from labgpu.hub.gpu_queue import QueuedSpawn, QueueRefused
from labgpu.hub.workspace_users import WorkspaceUser, id_store, workspace_user
from labgpu.labels import server_label
from labgpu.quota import (
    Limits,
    PolicyStore,
    SpawnOptionsError,
    SpawnRequest,
    options_form,
    parse_form,
    resolve,
    user_groups,
    validate_user_options,
)
from labgpu.units import format_duration

if TYPE_CHECKING:  # for mypy, a Spawner: the backend's attributes (user, name, image, ...) are there
    from jupyterhub.spawner import Spawner as SpawnerMixinBase
else:  # at run time a mixin: JupyterHub refuses a Spawner subclass without its own start, stop and poll
    from traitlets.config import LoggingConfigurable as SpawnerMixinBase

T = TypeVar("T")

SIMULATED_NOTICE = (
    '<p class="alert alert-info" id="labgpu-simulated">This hub\'s GPUs are <strong>simulated</strong> (demo mode): '
    "allocation, the queue and reclamation are real, but your workspace gets GPU IDs, not devices.</p>"
)


class GpuSpawnPolicy(SpawnerMixinBase):  # type: ignore[misc]  # JupyterHub's Spawner ships no types
    """Quotas, the spawn form, the GPU ledger and queue, and sessions: shared by every backend."""

    home_mount = Unicode(
        "/home/jovyan",
        help="Where the user's home volume is mounted in the workspace (the image user's home).",
    ).tag(config=True)

    shm_size = ByteSpecification(
        "2G",
        help="""Size of /dev/shm in the workspace, e.g. '2G' (the quota's ``shm`` replaces it).

        Docker's default of 64 MB makes PyTorch DataLoader workers fail with
        "bus error" / "unable to write to file </torch_...>".
        """,
    ).tag(config=True)

    pids_limit = Integer(
        4096,
        help="""Maximum number of processes in a workspace (a fork bomb stays inside it). Docker
        holds each container to it; on Kubernetes it is the kubelet's ``podPidsLimit``, per node.""",
    ).tag(config=True)

    run_as_uid = Unicode(
        "1000",
        help="Numeric uid the workspace runs as; never 0 (root). The image's jovyan is 1000.",
    ).tag(config=True)

    run_as_gid = Unicode("100", help="Numeric gid the workspace runs as.").tag(config=True)

    uid_per_user = Bool(
        True,
        help="""Run each user's workspace as a uid of their own (and give it each group folder's gid),
        kept in the ledger (labgpu/hub/workspace_users.py), so files in group folders show who wrote
        them; homes are handed to that uid on first start. False (or no ledger): every workspace
        runs as run_as_uid, as before.""",
    ).tag(config=True)

    hub_id = Unicode(
        "labgpu",
        help="""Name of this hub, written into every workspace's labels.

        Lets several hubs share one Docker engine (or cluster) and lets a hub find (and
        reconcile) its own workspaces after a crash.
        """,
    ).tag(config=True)

    quota_files = List(
        Unicode(),
        help="""Quota policy files (YAML; a directory means its *.yaml files), e.g.
        ``["/etc/labgpu/quotas.yaml"]``. Every spawn is held to them; they are re-read when they
        change, and a bad edit keeps the last good policy in force. Empty: no policy (only the
        configured image, no GPUs, no options form).
        """,
    ).tag(config=True)

    ledger_url = Unicode(
        "",
        help="""Database of who holds which GPU (an SQLite path or sqlite:/// URL, or a
        postgresql:// URL), shared with `labgpu gpus` and the poller. Empty: this hub hands out
        no GPUs.""",
    ).tag(config=True)

    gpu_placement = CaselessStrEnum(
        ["pack", "spread"],
        default_value="pack",
        help="""Multi-GPU placement: "pack" keeps large NVLink/PCIe islands whole for large
        requests (best fit); "spread" spreads servers across islands.""",
    ).tag(config=True)

    gpu_queue_timeout = Integer(
        86400,
        help="""Longest time (seconds) a spawn waits in the GPU queue when it asks for more GPUs
        than are free and the quota policy allows waiting (``fairshare.allow_queue``); then it
        fails with a message. 0: never queue, refuse at once as when waiting is not allowed.

        A spawn that may queue gets this much on top of ``start_timeout`` (JupyterHub gives up on
        a spawn after ``start_timeout``), so set ``start_timeout`` to the time a normal start
        takes (image pull included) and this to the longest acceptable wait.
        """,
    ).tag(config=True)

    gpu_queue_poll_interval = Float(
        5.0,
        help="""Seconds between dequeue passes while a spawn waits in the GPU queue. A release of
        GPUs by this hub triggers a pass at once; this interval catches releases made elsewhere
        (``labgpu gpus release``, the reclaimer) and keeps waiting entries' heartbeats fresh.""",
    ).tag(config=True)

    gpu_queue_abandon_after = Float(
        900.0,
        help="""Seconds after which a queue entry nobody waits for any more is abandoned (e.g. it
        was left by a hub that crashed and its owner did not come back). An owner who spawns
        again within this time keeps their place in the queue.""",
    ).tag(config=True)

    gpu_queue_progress_interval = Float(
        3.0,
        help="Seconds between updates of the queue position shown on a waiting user's spawn page.",
    ).tag(config=True)

    spawn_request: SpawnRequest | None = None
    limits: Limits | None = None
    _configured_start_timeout: int | None = None
    _configured_image_and_guarantee: tuple[str, Any] | None = None  # before any policy set them
    gpu_uuids: tuple[str, ...] = ()
    # Shared by every spawner of the hub (Docker calls have DockerSpawner's own executor).
    _blocking_executor: ClassVar[ThreadPoolExecutor | None] = None

    @validate("gpu_queue_poll_interval", "gpu_queue_progress_interval")
    def _validate_interval(self, proposal: Any) -> float:
        if proposal.value <= 0:
            raise ValueError(f"{proposal.trait.name} must be more than 0 seconds (got {proposal.value!r})")
        return float(proposal.value)

    @validate("run_as_uid")
    def _validate_uid(self, proposal: Any) -> str:
        uid = str(proposal.value)
        if not uid.isdigit() or int(uid) == 0:
            raise ValueError(f"run_as_uid must be a non-zero numeric uid (got {uid!r})")
        return uid

    # --- what a backend provides ------------------------------------------------------------

    def gpus_simulated(self) -> bool:
        """Are this hub's GPUs simulated (the demo: IDs, no devices)?"""
        return False

    def plain_options_form(self) -> Any:
        """The backend's own spawn form, used when no quota policy is configured."""
        return ""

    async def image_versions(self, limits: Limits) -> Mapping[str, str | None] | None:
        """Per image choice, the versions inside it, or None for one this backend does not
        have (the spawn page greys it out); None: the backend cannot tell."""
        return None

    def plain_options_from_form(self) -> Callable[[dict[str, list[str]]], dict[str, Any]]:
        """The backend's own form parser, used when no quota policy is configured."""
        return lambda formdata: {}

    def home_volume_name(self) -> str:
        """The name of the user's home volume (Docker) or claim (Kubernetes)."""
        raise NotImplementedError

    def workload_id(self) -> str:
        """What holds this server's GPUs (a container id, a pod name): recorded in the ledger."""
        raise NotImplementedError

    async def workload_image_info(self) -> Mapping[str, Any] | None:
        """What the backend knows of the running image (id, digests), for the session record."""
        return None

    async def start_failure(self, error: BaseException) -> BaseException | None:
        """The backend's start error as a message for the user (None: raise it as it is)."""
        return None

    def shared_folder_names(self) -> dict[str, str]:
        """The backend's name of each of the user's group folders (a volume, a claim) -> the folder."""
        return {}

    async def workspace_user(self) -> WorkspaceUser:
        """The uid and gids this workspace runs as (:mod:`labgpu.hub.workspace_users`): the same
        numbers on every backend, kept in the ledger."""
        if not (self.uid_per_user and self.ledger_url):
            return WorkspaceUser(self.run_as_uid, self.run_as_gid)
        return await self.blocking(
            workspace_user, id_store(self.ledger_url), self.user.name, self.shared_folder_names(), self.run_as_gid
        )

    async def prepare_workload(self) -> None:
        """What the backend does with the granted GPUs before its own start (e.g. the node that
        holds them, a claim naming them); a failure here releases them like a failed start."""

    # --- off the event loop -----------------------------------------------------------------

    @property
    def blocking_executor(self) -> ThreadPoolExecutor:
        """Threads for the ledger, the session store, NVML and the quota files."""
        if GpuSpawnPolicy._blocking_executor is None:
            GpuSpawnPolicy._blocking_executor = ThreadPoolExecutor(4, thread_name_prefix="labgpu-ledger")
        return GpuSpawnPolicy._blocking_executor

    async def blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call in :attr:`blocking_executor` and wait for it without blocking the hub."""
        return await asyncio.wrap_future(self.blocking_executor.submit(functools.partial(fn, *args, **kwargs)))

    @property
    def server_label(self) -> str:
        """``alice`` or ``alice/lab2``: this server, as logs and messages name it."""
        return server_label(self.user.name, self.name or "")

    # --- the quota policy -------------------------------------------------------------------

    @property
    def policy_store(self) -> PolicyStore | None:
        return hub_resources.policy_store(self.quota_files) if self.quota_files else None

    @property
    def ledger(self) -> Ledger | None:
        return hub_resources.ledger(self.ledger_url) if self.ledger_url else None

    def user_groups(self) -> tuple[str, ...]:
        """The policy's groups this user is in (:func:`labgpu.quota.user_groups`: their
        JupyterHub groups the policy defines, and the groups whose ``members`` list them)."""
        store = self.policy_store
        hub_groups = [g.name for g in self.user.groups]
        return user_groups(store.policy, self.user.name, hub_groups) if store is not None else ()

    async def resolve_limits(self) -> Limits | None:
        """This user's limits under the policy in force (re-read first if a file changed)."""
        store = self.policy_store
        if store is None:
            return None
        result = await self.blocking(store.refresh)
        if result.errors:
            self.log.error(
                "Quota files changed but are invalid; the last good policy stays in force:\n  %s",
                "\n  ".join(result.errors),
            )
        elif result.applied:
            self.log.info("Quota policy reloaded from %s", ", ".join(self.quota_files))
        return resolve(store.policy, self.user.name, self.user_groups())

    async def gpus_held_elsewhere(self) -> int:
        """GPUs held by this user's *other* servers (the ledger is the truth when there is one)."""
        if self.ledger is not None:
            allocations = await self.blocking(self.ledger.allocations)
            return sum(
                len(a.gpu_uuids) for a in allocations if a.user == self.user.name and a.server != (self.name or "")
            )
        return sum(
            s.spawn_request.gpus
            for s in self.user.spawners.values()
            if s is not self and s.active and getattr(s, "spawn_request", None)
        )

    @default("options_form")
    def _default_options_form(self) -> Any:
        if not self.quota_files:  # no policy: the backend's own form
            return self.plain_options_form()
        return lambda spawner: spawner.render_options_form()

    async def render_options_form(self) -> str:
        """The spawn page's form: only what this user's limits allow (empty: no policy, no form)."""
        limits = await self.resolve_limits()
        if limits is None:
            return ""
        form = options_form(
            limits,
            gpus_in_use_by_user=await self.gpus_held_elsewhere(),
            previous=self.orm_spawner.user_options,
            disk_note=await disk_quota.spawn_page_note(self, limits),
            image_versions=await self.image_versions(limits),
        )
        return (SIMULATED_NOTICE if self.gpus_simulated() and limits.gpus else "") + form

    @default("options_from_form")
    def _default_options_from_form(self) -> Callable[[dict[str, list[str]]], dict[str, Any]]:
        # A default, not a method: `c.Spawner.options_from_form` stays configurable as inherited.
        return parse_form if self.quota_files else self.plain_options_from_form()

    @default("apply_user_options")
    def _default_apply_user_options(self) -> Callable[[GpuSpawnPolicy, dict[str, Any]], Awaitable[None]]:
        # A refusal (SpawnException) is also recorded for the metrics' labgpu_spawn_refusals_total.
        return lambda spawner, opts: event_log.with_refusals_recorded(spawner, lambda: spawner.apply_policy(opts))

    async def apply_policy(self, user_options: dict[str, Any]) -> None:
        """Hold ``user_options`` (form, REST API, or a choice saved from an earlier spawn) to the
        user's limits and apply them; refuse with HTTP 400 naming the limit, never clamp."""
        limits = await self.resolve_limits()
        if limits is None:
            # No policy: a plain spawner, whose one option, "image", the backend's start holds
            # to its allowed images (none by default); any other option is refused.
            if any(key != "image" for key in user_options or {}):
                raise SpawnException(
                    "This hub takes no spawn options (no quota policy is configured).",
                    reason="options",
                    status_code=400,
                )
            return
        if self.name:
            others = [s for s in self.user.spawners.values() if s is not self and s.name and s.active]
            if len(others) >= limits.named_servers:
                raise SpawnException(
                    f"You may run {limits.named_servers} named server(s) besides your default one, and "
                    f"{len(others)} are running. Stop one first.",
                    reason="quota",
                    status_code=400,
                )
        try:
            request = validate_user_options(limits, user_options, gpus_in_use_by_user=await self.gpus_held_elsewhere())
        except SpawnOptionsError as e:
            raise SpawnException(str(e), reason="quota", status_code=400) from None
        await disk_quota.refuse_over_quota(self, limits)  # home or shared folder over its disk quota
        if request.gpus and self.ledger is None:
            raise SpawnException(
                "This hub has no GPUs to hand out; start a server with 0 GPUs.", reason="capacity", status_code=400
            )
        self.limits, self.spawn_request = limits, request
        record_profile(self.orm_spawner, user_options, request.profile)  # the admin page's Profile column
        if self._configured_image_and_guarantee is None:
            self._configured_image_and_guarantee = (self.image, self.mem_guarantee)  # type: ignore[has-type]
        # What the policy no longer sets falls back to the configuration, not to the last spawn's.
        self.image = request.image or self._configured_image_and_guarantee[0]
        self.mem_limit = request.memory
        self.mem_guarantee = request.memory_guarantee or self._configured_image_and_guarantee[1]
        self.cpu_limit = request.cpus
        self.shm_size = request.shm
        self.pids_limit = request.pids
        # JupyterHub reads start_timeout before start() runs: a spawn that may wait in the GPU
        # queue gets the queue's wait on top of the normal start time.
        if self._configured_start_timeout is None:
            self._configured_start_timeout = int(self.start_timeout)  # type: ignore[has-type]
        may_queue = request.gpus > 0 and self.queue_allowed()
        self.start_timeout = self._configured_start_timeout + (self.gpu_queue_timeout if may_queue else 0)

    # --- GPUs -------------------------------------------------------------------------------

    def gpu_patterns(self) -> tuple[str, ...] | None:
        """NVML name substrings of the GPU models this request may get (None = any model)."""
        request, limits = self.spawn_request, self.limits
        store = self.policy_store
        if request is None or limits is None or store is None:
            return None
        names = (request.gpu_model,) if request.gpu_model else limits.models
        if not names:
            return None
        models = store.policy.spec.gpus.models
        return tuple(p for name in names if name in models for p in models[name].match) or tuple(names)

    def queue_allowed(self) -> bool:
        """May a spawn wait in the GPU queue (policy ``fairshare.allow_queue``, and a queue timeout)?"""
        store = self.policy_store
        allowed = store.policy.spec.fairshare.allow_queue if store is not None else False
        return allowed and self.gpu_queue_timeout > 0 and self.ledger is not None

    def shared_gpu_queue(self) -> gpu_queue.GpuQueue:
        """This process's GPU queue for the ledger (shared by every spawner of the hub)."""
        store, the_ledger = self.policy_store, self.ledger
        if the_ledger is None:
            raise RuntimeError("no GPU queue without a ledger (ledger_url is empty)")
        return gpu_queue.queue_for(
            the_ledger,
            lambda: store.policy if store is not None else None,
            poll_interval=self.gpu_queue_poll_interval,
            abandon_after=self.gpu_queue_abandon_after,
            progress_interval=self.gpu_queue_progress_interval,
        )

    async def acquire_gpus(self) -> tuple[str, ...]:
        """This spawn's GPUs from the ledger: at once when free and nobody waits, else after a
        wait in the fair-share queue (progress() shows where); refused as a SpawnException."""
        assert self.ledger is not None
        exclude = tuple(self.policy_store.policy.spec.gpus.exclude) if self.policy_store else ()
        spawn = QueuedSpawn(
            self.user.name,
            self.name or "",
            self.spawn_request.gpus if self.spawn_request else 0,
            groups=self.user_groups(),
            models=self.gpu_patterns(),
            placement=self.gpu_placement,
            image=self.image,
            exclude=exclude,
            max_runtime=self.limits.max_runtime if self.limits else None,
            user_total=self.limits.gpus_total if self.limits else None,
            group=self.spawn_request.group if self.spawn_request else None,  # the group that pays
        )
        try:
            allocation = await asyncio.wait_for(
                self.shared_gpu_queue().acquire(spawn, allow_queue=self.queue_allowed()),
                self.gpu_queue_timeout or None,
            )
        except GpuLimitExceeded as e:  # e.g. another server of this user got GPUs meanwhile
            raise SpawnException(str(e), reason="quota", status_code=400) from None
        except (NotEnoughGpus, QueueRefused) as e:
            raise SpawnException(str(e), reason="capacity", status_code=503) from None
        except TimeoutError:
            raise SpawnException(
                f"No GPUs came free for you within {format_duration(self.gpu_queue_timeout)} in the GPU queue. "
                "Try again later or ask for fewer GPUs.",
                reason="capacity",
                status_code=503,
            ) from None
        return allocation.gpu_uuids

    async def start(self) -> Any:
        """Grant the GPUs (ledger, queue), start the backend's workload with them, record it."""
        self.gpu_uuids = ()
        the_ledger = self.ledger
        if the_ledger is not None:
            await self.settle_kept_gpus()  # an old workload of this server that could not be stopped
            self.gpu_uuids = await event_log.with_refusals_recorded(self, self.acquire_gpus)
        try:
            async with hub_limits.start_slot():  # JupyterHub's concurrent_spawn_limit, not counting the GPU wait
                await self.prepare_workload()
                started = await super().start()
        except BaseException as e:
            await self.release_gpus("failed start")
            failure = await self.start_failure(e)
            if failure is not None:
                raise failure from None
            raise
        if the_ledger is not None and self.gpu_uuids:
            await self.blocking(the_ledger.attach_container, self.user.name, self.name or "", self.workload_id())
        # Recorded beside the spawn, not before it: the user's server is ready either way.
        self._session_task = asyncio.ensure_future(self.record_session())
        return started

    # --- sessions and progress --------------------------------------------------------------

    async def record_session(self) -> None:
        """Record what this workspace runs on (image digest, driver, CUDA, GPUs), so that its
        results can be reproduced (`labgpu usage --sessions`). Never fails the spawn."""
        if not self.ledger_url:
            return
        try:
            image_info = await self.workload_image_info()
            await self.blocking(
                sessions.open_session,
                self.ledger_url,
                self.user.name,
                self.name or "",
                container_id=self.workload_id(),
                image=self.image,
                image_info=image_info or {},
                gpu_uuids=self.gpu_uuids,
            )
        except Exception as e:
            self.log.warning("Could not record the session of %s: %s", self.server_label, e)

    async def end_session(self, reason: str) -> None:
        if self.ledger_url:
            try:
                await self.blocking(sessions.close_session, self.ledger_url, self.user.name, self.name or "", reason)
            except Exception as e:
                self.log.warning("Could not close the session of %s: %s", self.server_label, e)

    async def gpu_progress(self) -> AsyncIterator[dict[str, Any]]:
        """Spawn-page events: queue position, whose GPUs it waits for, the estimated wait."""
        if self.ledger is None:
            return
        if self.gpus_simulated() and self.spawn_request and self.spawn_request.gpus:
            yield {"message": "This hub's GPUs are simulated (demo): your workspace gets their IDs, not devices."}
        async for event in self.shared_gpu_queue().progress_events(
            self.user.name, self.name or "", lambda: self.pending == "spawn"
        ):
            yield event
