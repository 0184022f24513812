"""GPUKubeSpawner: KubeSpawner with LabGPU's quotas, exact GPUs, fair-share queue, reclaim and
sessions: the same :class:`labgpu.hub.gpu_spawn.GpuSpawnPolicy` as the Docker spawner.

Only the workload differs. A spawn is: the policy checks the user's options (HTTP 400 naming
the limit); the ledger grants GPUs, or the spawn waits in the fair-share queue (the spawn page
shows its place) instead of timing out as a pending pod does; :meth:`GPUKubeSpawner.prepare_workload`
finds the node holding the grant and, in ``dra`` mode, creates the ResourceClaim naming exactly
those GPUs; KubeSpawner creates the home claim and the pod, which :func:`labgpu.kube.objects.make_pod`
builds; stop and poll release the GPUs only once the API server says the pod is gone
(:class:`labgpu.hub.lifecycle.GpuLifecycle`), then the claim is deleted.

Registered as the ``labgpu-kube`` spawner: ``c.JupyterHub.spawner_class = "labgpu-kube"``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from typing import Any

from jupyterhub.spawner import SpawnException
from kubernetes_asyncio.client import models as k8s_models
from kubernetes_asyncio.client.models import V1PersistentVolumeClaim, V1Pod
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from traitlets import Bool, CaselessStrEnum, Dict, List, Unicode, default

from labgpu.hub.gpu_spawn import GpuSpawnPolicy
from labgpu.hub.lifecycle import ContainerCheck, GpuLifecycle
from labgpu.kube.objects import (
    DRA_ATTRIBUTE_DOMAIN,
    PodConfigError,
    PodWorkspace,
    dns_name,
    make_gpu_claim,
    make_group_pvc,
    make_home_pvc,
    make_pod,
)
from labgpu.kube.placement import (
    GrantSpansNodes,
    PlacementError,
    gpu_nodes_from_map,
    gpu_nodes_from_slices,
    node_of_grant,
)
from labgpu.quota.volumes import group_volume_name

GONE_PHASES = {"Succeeded", "Failed"}  # a pod in these runs no process that can use a GPU


def to_model(kind: str, data: Any) -> Any:
    """A manifest (a dict, camelCase keys) as the API client's model ``kind`` (``"V1Pod"``), all
    the way down: KubeSpawner reads ``pod.metadata.name``. A key the model lacks raises KeyError."""
    if data is None:
        return None
    if kind.startswith("list["):
        return [to_model(kind[5:-1], item) for item in data]
    if kind.startswith("dict("):
        value_kind = kind[kind.index(",") + 1 : -1].strip()
        return {key: to_model(value_kind, value) for key, value in data.items()}
    model = getattr(k8s_models, kind, None)
    if model is None:  # str, int, bool, object
        return data
    attributes = {json_key: attribute for attribute, json_key in model.attribute_map.items()}
    return model(**{attributes[k]: to_model(model.openapi_types[attributes[k]], v) for k, v in data.items()})


def api_error(error: BaseException) -> str:
    """A Kubernetes API error in one line: the API server's own message when it gave one."""
    if isinstance(error, ApiException):
        body = error.body.decode(errors="replace") if isinstance(error.body, bytes) else str(error.body or "")
        return f"{error.status} {error.reason}: {body}".strip().rstrip(":")
    return str(error) or type(error).__name__


class GPUKubeSpawner(GpuSpawnPolicy, GpuLifecycle, KubeSpawner):  # type: ignore[misc]  # KubeSpawner ships no types
    """Spawn each user's JupyterLab as a hardened pod with exactly the GPUs the ledger granted."""

    gpu_mode = CaselessStrEnum(
        ["dra", "count", "simulated"],
        default_value="dra",
        help="""How GPUs reach a pod.

        "dra": Dynamic Resource Allocation (Kubernetes 1.34+, NVIDIA's DRA driver): a
        resource.k8s.io/v1 ResourceClaim for the DeviceClass gpu.nvidia.com (MIG devices:
        mig.nvidia.com) whose CEL selector names exactly the granted UUIDs, and the pod on the
        node that holds them (read from the driver's ResourceSlices).
        "count": the device plugin's nvidia.com/gpu: N on the node the ledger chose (from
        `gpu_node_map`); the plugin picks which of that node's GPUs, and the poller reports
        which each pod really uses.
        "simulated": GPU IDs only (the demo and tests).""",
    ).tag(config=True)

    gpu_node_map = Dict(
        key_trait=Unicode(),
        value_trait=List(Unicode()),
        help="""Which GPUs each node holds, ``{"gpu-node-1": ["GPU-3f2a…", …], …}``: needed in
        "count" mode (nothing in the cluster publishes GPU UUIDs there), optional in "dra" mode
        (where the DRA driver's ResourceSlices say it; this map is read when they are not).""",
    ).tag(config=True)

    dra_driver = Unicode(
        DRA_ATTRIBUTE_DOMAIN,
        help="The DRA driver whose ResourceSlices list the GPUs (NVIDIA's: gpu.nvidia.com).",
    ).tag(config=True)

    shared_storage_class = Unicode(
        None,
        allow_none=True,
        help="""StorageClass of the groups' shared folders: ReadWriteMany claims (NFS, CephFS,
        Longhorn RWX, ...). None: the cluster's default class, which must then support RWX.""",
    ).tag(config=True)

    shared_pvc_ensure = Bool(
        True,
        help="Create a group's shared-folder claim on its first use (else an admin creates it).",
    ).tag(config=True)

    _gpu_node: str | None = None
    _claim_name: str | None = None

    @default("storage_pvc_ensure")
    def _default_storage_pvc_ensure(self) -> bool:
        return True  # every user has a persistent home, as on Docker

    @default("pvc_name_template")
    def _default_pvc_name_template(self) -> str:
        return "labgpu-home-{username}"  # one home per user, shared by their named servers

    # --- what GpuSpawnPolicy and GpuLifecycle ask of the backend ----------------------------

    def gpus_simulated(self) -> bool:
        return bool(self.gpu_mode == "simulated")

    def plain_options_form(self) -> Any:
        return KubeSpawner._options_form_default(self)  # its profile_list form

    def plain_options_from_form(self) -> Callable[[dict[str, list[str]]], dict[str, Any]]:
        return KubeSpawner._options_from_form_default(self)  # type: ignore[no-any-return]

    def home_volume_name(self) -> str:
        return str(self.pvc_name)

    def workload_id(self) -> str:
        return str(self.pod_name)

    def workload_name(self) -> str:
        return str(self.pod_name)

    async def workload_image_info(self) -> Mapping[str, Any] | None:
        pod = self.pod_reflector.pods.get(f"{self.namespace}/{self.pod_name}") or {}
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("imageID"):
                return {"RepoDigests": [status["imageID"]]}
        return None

    async def start_failure(self, error: BaseException) -> BaseException | None:
        if isinstance(error, ApiException):
            failure: BaseException = SpawnException(
                f"Kubernetes could not start your workspace: {api_error(error)}",
                reason="kubernetes",
                status_code=500,
            )
            return failure
        return None

    async def check_workload(self, workload: str) -> ContainerCheck:
        """Gone: the API server has no such pod, or it has ended (Succeeded, Failed)."""
        try:
            pod = await self.api.read_namespaced_pod(workload, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return ContainerCheck(True, "not found")
            return ContainerCheck(False, f"Kubernetes could not say whether it is gone: {api_error(e)}")
        except Exception as e:
            return ContainerCheck(False, f"Kubernetes could not say whether it is gone: {api_error(e)}")
        phase = str(getattr(pod.status, "phase", "") or "")
        return ContainerCheck(phase in GONE_PHASES, phase or "unknown phase")

    async def stop_workload_again(self, workload: str) -> str | None:
        try:
            await self.api.delete_namespaced_pod(workload, self.namespace, grace_period_seconds=0)
        except ApiException as e:
            if e.status != 404:
                return api_error(e)
        except Exception as e:
            return api_error(e)
        return None

    # --- the workload ---------------------------------------------------------------------

    def claim_name(self) -> str:
        return dns_name(f"{self.pod_name}-gpus")

    def shared_folder_names(self) -> dict[str, str]:
        folders = self.limits.shared_volumes if self.limits else {}
        return {dns_name(group_volume_name(self.hub_id, f)): f for f in folders.values()}

    def shared_claims(self) -> dict[str, str]:
        """The user's groups' shared folders: each one's ReadWriteMany claim (``<hub_id>-group-<name>``)."""
        folders = self.limits.shared_volumes if self.limits else {}
        return {group: dns_name(group_volume_name(self.hub_id, name)) for group, name in folders.items()}

    async def gpu_nodes(self) -> dict[str, str]:
        """``{uuid: node}``: the DRA driver's ResourceSlices in "dra" mode, else ``gpu_node_map``."""
        if self.gpu_mode == "dra":
            resources = shared_client("ResourceV1Api")
            slices = await resources.list_resource_slice(field_selector=f"spec.driver={self.dra_driver}")
            found = gpu_nodes_from_slices((s.to_dict() for s in slices.items), self.dra_driver)
            if found:
                return found
        return gpu_nodes_from_map(self.gpu_node_map)

    async def prepare_workload(self) -> None:
        """The node holding the grant, the groups' shared claims, and (dra) the GPUs' claim."""
        self._gpu_node, self._claim_name = None, None
        if self.gpu_uuids and self.gpu_mode != "simulated":
            try:
                self._gpu_node = node_of_grant(self.gpu_uuids, await self.gpu_nodes())
            except GrantSpansNodes as e:
                raise SpawnException(
                    f"No single node has {len(self.gpu_uuids)} free GPUs together ({e}). Try again later or ask "
                    "for fewer GPUs.",
                    reason="capacity",
                    status_code=503,
                ) from None
            except (PlacementError, ApiException) as e:
                detail = api_error(e) if isinstance(e, ApiException) else str(e)
                raise SpawnException(
                    f"Your GPUs cannot be given to a pod: {detail}. Ask the hub's admin.",
                    reason="config",
                    status_code=500,
                ) from None
        if self.shared_pvc_ensure:
            for group, claim in self.shared_claims().items():
                size = self.limits.shared_disks.get(group) if self.limits else None
                pvc = make_group_pvc(
                    claim, self.namespace, group, self.hub_id, size=size, storage_class=self.shared_storage_class
                )
                await self.create_unless_exists(self.api.create_namespaced_persistent_volume_claim, pvc)
        if self.gpu_uuids and self.gpu_mode == "dra":
            self._claim_name = self.claim_name()
            await self.delete_claim()  # a stale claim of an earlier start may name other GPUs
            manifest = make_gpu_claim(self.pod_workspace({}, None))
            await shared_client("ResourceV1Api").create_namespaced_resource_claim(self.namespace, manifest)

    async def create_unless_exists(self, create: Callable[..., Any], manifest: dict[str, Any]) -> None:
        try:
            await create(self.namespace, manifest)
        except ApiException as e:
            if e.status != 409:
                raise

    async def delete_claim(self) -> None:
        """Delete this server's ResourceClaim (the API server frees its GPUs once no pod uses it)."""
        try:
            await shared_client("ResourceV1Api").delete_namespaced_resource_claim(self.claim_name(), self.namespace)
        except ApiException as e:
            if e.status != 404:
                self.log.warning("Could not delete the GPU claim of %s: %s", self.server_label, api_error(e))

    def pod_workspace(self, environment: dict[str, str], command: list[str] | None) -> PodWorkspace:
        """Gather this spawn's inputs into the plain description the builders take (no I/O)."""
        return PodWorkspace(
            name=self.pod_name,
            namespace=self.namespace,
            image=self.image,
            user=self.user.name,
            server=self.name or "",
            hub_id=self.hub_id,
            environment=environment,
            command=command,
            port=self.port,
            run_as_uid=int(self.run_as_uid),
            run_as_gid=int(self.run_as_gid),
            shm_size=int(self.shm_size),
            mem_limit=int(self.mem_limit) if self.mem_limit else None,
            mem_guarantee=int(self.mem_guarantee) if self.mem_guarantee else None,
            cpu_limit=float(self.cpu_limit) if self.cpu_limit else None,
            cpu_guarantee=float(self.cpu_guarantee) if self.cpu_guarantee else None,
            home_claim=self.pvc_name if self.storage_pvc_ensure else "",
            home_mount=self.home_mount,
            shared_claims=self.shared_claims(),
            gpu_uuids=tuple(self.gpu_uuids),
            gpu_mode=self.gpu_mode,
            gpu_node=self._gpu_node,
            claim_name=self._claim_name,
            image_pull_policy=self.image_pull_policy,
            node_selector=dict(self.node_selector or {}),
            tolerations=tuple(self.tolerations or ()),
            # KubeSpawner's labels: its pod reflector finds the pod by them.
            extra_labels=self._build_pod_labels(self._expand_all(self.extra_labels)),
            extra_annotations=self._build_common_annotations(self._expand_all(self.extra_annotations)),
        )

    async def get_pod_manifest(self) -> V1Pod:
        """The pod from :func:`labgpu.kube.objects.make_pod` (replaces KubeSpawner's)."""
        command = [*self.cmd, *self.get_args()] if self.cmd else None
        ids = await self.workspace_user()  # the same uid and group-folder gids as on Docker
        environment = {**self.get_env(), **(ids.environment(self.user.name) if ids.uid != self.run_as_uid else {})}
        workspace = replace(
            self.pod_workspace(environment, command),
            run_as_uid=int(ids.uid),
            run_as_gid=int(ids.gid),
            supplemental_groups=tuple(int(g) for g in ids.group_add),
        )
        try:
            pod = make_pod(workspace)
        except PodConfigError as e:
            raise SpawnException(
                f"This workspace cannot be started: {e}. Ask the hub's admin to fix the configuration.",
                reason="config",
                status_code=500,
            ) from None
        model: V1Pod = to_model("V1Pod", pod)
        return model

    def get_pvc_manifest(self) -> V1PersistentVolumeClaim:
        """The user's home claim, of their quota's ``disk`` (else ``storage_capacity``, else 10Gi)."""
        size = self.limits.disk if self.limits and self.limits.disk else None
        pvc = make_home_pvc(
            self.pvc_name, self.namespace, self.user.name, self.hub_id, size=size, storage_class=self.storage_class
        )
        if size is None and self.storage_capacity:
            pvc["spec"]["resources"]["requests"]["storage"] = self.storage_capacity
        model: V1PersistentVolumeClaim = to_model("V1PersistentVolumeClaim", pvc)
        return model

    async def stop(self, now: bool = False) -> None:
        try:
            await super().stop(now=now)
        finally:
            if self.gpu_mode == "dra":
                await self.delete_claim()

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        """The GPU queue's events while the spawn waits for GPUs, then KubeSpawner's pod events."""
        async for event in self.gpu_progress():
            yield event
        async for event in super().progress():
            yield event
