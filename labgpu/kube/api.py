"""The few Kubernetes API calls made from synchronous code (hub start-up, the poller), through
kubernetes_asyncio in a thread with an event loop of its own (so they work inside the hub's
running loop too). Credentials: the pod's service account in a cluster, else ~/.kube/config.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from labgpu.kube.objects import label_value
from labgpu.labels import LABEL_HUB

T = TypeVar("T")


def run_blocking(call: Callable[[], Awaitable[T]]) -> T:
    """Run an async API call to completion from synchronous code, even inside a running loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(call())).result()  # type: ignore[arg-type]


async def _load_config() -> None:
    from kubernetes_asyncio import config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config()


def list_resource_slices(driver: str) -> list[dict[str, Any]]:
    """Every ResourceSlice of ``driver`` (cluster-scoped: the hub's ClusterRole allows list)."""
    from kubernetes_asyncio import client

    async def call() -> list[dict[str, Any]]:
        await _load_config()
        async with client.ApiClient() as api:
            slices = await client.ResourceV1Api(api).list_resource_slice(field_selector=f"spec.driver={driver}")
            return [api.sanitize_for_serialization(s) for s in slices.items]

    return run_blocking(call)


def list_workspace_pods(namespace: str, hub_id: str, node: str | None = None) -> list[dict[str, Any]]:
    """This hub's workspace pods in ``namespace`` (label ``org.labgpu.hub``), on ``node`` if given."""
    from kubernetes_asyncio import client

    async def call() -> list[dict[str, Any]]:
        await _load_config()
        async with client.ApiClient() as api:
            pods = await client.CoreV1Api(api).list_namespaced_pod(
                namespace,
                label_selector=f"{LABEL_HUB}={label_value(hub_id)}",
                field_selector=f"spec.nodeName={node}" if node else "",
            )
            return [api.sanitize_for_serialization(p) for p in pods.items]

    return run_blocking(call)


def delete_pod(namespace: str, name: str) -> None:
    from kubernetes_asyncio import client

    async def call() -> None:
        await _load_config()
        async with client.ApiClient() as api:
            await client.CoreV1Api(api).delete_namespaced_pod(name, namespace)

    run_blocking(call)
