"""What one hub process shares between its spawners: the quota policy in force, the GPU ledger
and the GPU inventory; and what the hub does with them once at start (refuse a bad policy,
record the inventory, reconcile the ledger with Docker)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labgpu.db.ledger import Ledger, ReconcileResult
from labgpu.db.session_store import SessionStore
from labgpu.gpus.inventory import Gpu, InventoryError, inventory_source
from labgpu.gpus.nvml import NvmlInventory
from labgpu.gpus.reconcile import ReconcilePlan, reconcile
from labgpu.hub.event_log import record_reconcile
from labgpu.labels import hub_filter
from labgpu.quota import PolicyStore

log = logging.getLogger("labgpu")

_policy_stores: dict[tuple[str, ...], PolicyStore] = {}
_ledgers: dict[str, Ledger] = {}
_session_stores: dict[str, SessionStore] = {}
_driver_version: list[str | None] = []  # [] = not asked yet


def default_ledger_path(environ: Mapping[str, str] = os.environ) -> str:
    """Where the hub keeps its ledger: $LABGPU_LEDGER, else ledger.sqlite in $LABGPU_STATE_DIR
    (./.state by default). The hub, `labgpu gpus`, the poller and `labgpu usage` agree on it."""
    if environ.get("LABGPU_LEDGER", "").strip():
        return environ["LABGPU_LEDGER"].strip()
    return str(Path(environ.get("LABGPU_STATE_DIR", "").strip() or ".state").resolve() / "ledger.sqlite")


def policy_store(paths: Sequence[str]) -> PolicyStore:
    """The one PolicyStore of this process for these quota files (loaded on first use)."""
    key = tuple(paths)
    if key not in _policy_stores:
        store = PolicyStore(list(paths))
        store.load()  # raises PolicyError listing every problem
        _policy_stores[key] = store
    return _policy_stores[key]


def ledger(url: str) -> Ledger:
    """The one Ledger of this process for this database (migrated on first open)."""
    if url not in _ledgers:
        _ledgers[url] = Ledger(url)
    return _ledgers[url]


def session_store(url: str) -> SessionStore:
    """The one SessionStore of this process for this ledger."""
    if url not in _session_stores:
        _session_stores[url] = SessionStore(ledger(url))
    return _session_stores[url]


def host_driver_version() -> str | None:
    """The NVIDIA driver version of this host (NVML), asked once; None without a driver."""
    if not _driver_version:
        try:
            import pynvml

            pynvml.nvmlInit()
            version = pynvml.nvmlSystemGetDriverVersion()
            _driver_version.append(version.decode() if isinstance(version, bytes) else str(version))
        except Exception:  # no driver, no library: a CPU-only hub
            _driver_version.append(None)
    return _driver_version[0]


def read_inventory(spec: str) -> list[Gpu]:
    """GPUs from ``nvml``, ``static:FILE``, ``replay:FILE``, ``none``, or ``auto`` (NVML when a
    driver answers, else none: a CPU-only hub)."""
    if spec == "none":
        return []
    if spec == "auto":
        try:
            return NvmlInventory().gpus()
        except InventoryError as e:
            log.info("No GPUs: %s (workspaces run CPU-only)", e)
            return []
    return inventory_source(spec).gpus()


@dataclass(frozen=True)
class StartupReport:
    gpus: int
    plan: ReconcilePlan
    result: ReconcileResult | None
    stopped: tuple[str, ...]


def reconcile_with_docker(
    the_ledger: Ledger, hub_id: str, docker_client: Any
) -> tuple[ReconcilePlan, ReconcileResult | None, list[str]]:
    """Make the ledger agree with this hub's containers: adopt running ones, release the GPUs
    of vanished ones, stop a container that runs on a GPU the ledger gives to another server."""
    containers = []
    for c in docker_client.containers.list(all=True, filters={"label": hub_filter(hub_id)}):
        containers.append({"id": c.id, "state": c.status, "created": c.attrs.get("Created", ""), "labels": c.labels})
    known = {h.gpu.uuid for h in the_ledger.holdings()}
    # Only this hub's allocations: another hub on the same (PostgreSQL) ledger keeps its own.
    plan = reconcile(the_ledger.allocations(hub_id=hub_id), containers, hub_id=hub_id, known_gpus=known)
    for line in plan.conflicts:
        log.warning("Ledger/Docker conflict: %s", line)
    result = the_ledger.apply_reconcile(plan) if not plan.empty else None
    stopped = []
    for stop in plan.stops:
        try:
            docker_client.containers.get(stop.container_id).stop(timeout=10)
            stopped.append(stop.container_id)
        except Exception as e:  # the container went away meanwhile: nothing to stop
            log.warning("Could not stop %s (%s): %s", stop.container_id[:12], stop.reason, e)
    return plan, result, stopped


def prepare_hub(
    *, quota_files: Sequence[str], ledger_url: str, gpu_source: str, hub_id: str, docker_client: Any
) -> StartupReport:
    """Once at hub start. Raises PolicyError (bad quota files) or InventoryError (a GPU source
    that cannot be read): the hub refuses to start and says why."""
    if quota_files:
        policy_store(quota_files)
    the_ledger = ledger(ledger_url)
    the_ledger.hub_id = hub_id  # recorded with its grants, for reconcile with several hubs
    gpus = read_inventory(gpu_source)
    the_ledger.sync_inventory(gpus)
    plan, result, stopped = reconcile_with_docker(the_ledger, hub_id, docker_client)
    record_reconcile(ledger_url, plan, result, len(stopped))  # for the metrics' labgpu_ledger_drift_total
    return StartupReport(len(gpus), plan, result, tuple(stopped))
