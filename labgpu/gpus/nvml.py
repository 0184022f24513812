"""The NVML inventory source: the host's GPUs as the NVIDIA driver reports them.

Identity (UUID, name, memory, PCI bus id, NUMA node) and topology (which GPUs share a PCIe
switch, which reach each other over NVLink or NVSwitch) are read once, since they are fixed
while the driver is loaded; health and MIG mode are re-read on every call. The only module of
the inventory that talks to the driver; ``labgpu.gpus.inventory`` holds the model it fills in.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import replace
from typing import Any

from labgpu.gpus.inventory import Gpu, InventoryError, MigDevice

__all__ = ["NvmlInventory"]


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _normal_bus_id(bus_id: str) -> str:
    """NVML reports ``00000000:17:00.0``; remote NVLink PCI info may use other zero padding."""
    bus_id = bus_id.strip().lower()
    if ":" in bus_id:
        domain, rest = bus_id.split(":", 1)
        return f"{int(domain, 16):08x}:{rest}"
    return bus_id


class NvmlInventory:
    """The host's GPUs as NVML reports them, with cached handles (NVML calls take a driver lock).

    Identity and topology are read once; health and MIG state are re-read on every ``gpus()``.
    An NVML error on one GPU marks that GPU unhealthy instead of failing the whole inventory.
    """

    def __init__(self, nvml: Any = None):
        if nvml is None:
            try:
                import pynvml  # nvidia-ml-py
            except ImportError:  # pragma: no cover - it is a dependency
                raise InventoryError("nvidia-ml-py is not installed; pip install nvidia-ml-py") from None
            nvml = pynvml
        self._nvml = nvml
        self._lock = threading.Lock()
        self._handles: list[tuple[int, Any, str]] | None = None  # (index, handle, uuid)
        self._static: dict[str, dict[str, Any]] = {}
        self._topology: dict[str, tuple[str, frozenset[str]]] = {}

    def _init(self) -> None:
        nvml = self._nvml
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            raise InventoryError(
                f"NVML is not available on this host ({exc}); is the NVIDIA driver loaded? "
                "Where the hub cannot see the GPUs, use a static inventory (--source static:FILE)."
            ) from None
        handles = []
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            except nvml.NVMLError as exc:
                # Without a UUID the GPU cannot be tracked; it is reported as a placeholder.
                handles.append((index, None, f"unknown-index-{index}"))
                self._static[f"unknown-index-{index}"] = {"error": str(exc)}
                continue
            handles.append((index, handle, uuid))
            self._static[uuid] = self._read_static(handle)
        self._handles = handles
        self._topology = self._read_topology()

    def _read_static(self, handle: Any) -> dict[str, Any]:
        """Name, memory size, PCI bus id and NUMA node: fixed while the driver is loaded."""
        nvml = self._nvml
        info: dict[str, Any] = {}
        try:
            info["model"] = _text(nvml.nvmlDeviceGetName(handle))
            info["memory_total"] = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
            info["pci_bus_id"] = _normal_bus_id(_text(nvml.nvmlDeviceGetPciInfo(handle).busId))
        except nvml.NVMLError as exc:
            info["error"] = str(exc)
        try:
            info["numa_node"] = int(nvml.nvmlDeviceGetNumaNodeId(handle))
        except (nvml.NVMLError, AttributeError):
            info["numa_node"] = None
        return info

    def _read_topology(self) -> dict[str, tuple[str, frozenset[str]]]:
        """PCIe switch groups (common ancestor at most a multi-level switch) and NVLink peers."""
        nvml = self._nvml
        assert self._handles is not None
        usable = [(i, h, u) for i, h, u in self._handles if h is not None and "error" not in self._static[u]]
        by_bus = {self._static[u]["pci_bus_id"]: u for _, _, u in usable}
        switch_level = getattr(nvml, "NVML_TOPOLOGY_MULTIPLE", 20)
        # Union-find over "shares a PCIe switch".
        parent = {u: u for _, _, u in usable}

        def find(u: str) -> str:
            while parent[u] != u:
                parent[u] = parent[parent[u]]
                u = parent[u]
            return u

        for a in range(len(usable)):
            for b in range(a + 1, len(usable)):
                try:
                    level = nvml.nvmlDeviceGetTopologyCommonAncestor(usable[a][1], usable[b][1])
                except (nvml.NVMLError, AttributeError):
                    continue
                if level <= switch_level:
                    parent[find(usable[a][2])] = find(usable[b][2])
        members: dict[str, list[str]] = {}
        for _, _, u in usable:
            members.setdefault(find(u), []).append(u)
        switch_group = {}
        for group in members.values():
            name = "pcie-" + min(self._static[u]["pci_bus_id"] for u in group) if len(group) > 1 else ""
            for u in group:
                switch_group[u] = name

        peers: dict[str, set[str]] = {u: set() for _, _, u in usable}
        on_nvswitch: set[str] = set()
        max_links = getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)
        switch_type = getattr(nvml, "NVML_NVLINK_DEVICE_TYPE_SWITCH", 2)
        for _, handle, uuid in usable:
            for link in range(max_links):
                try:
                    if nvml.nvmlDeviceGetNvLinkState(handle, link) != 1:
                        continue
                except (nvml.NVMLError, AttributeError):
                    # NotSupported (no NVLink) or InvalidArgument (no such link): stop probing.
                    break
                try:
                    remote_type = nvml.nvmlDeviceGetNvLinkRemoteDeviceType(handle, link)
                except (nvml.NVMLError, AttributeError):
                    remote_type = None
                if remote_type == switch_type:
                    on_nvswitch.add(uuid)
                    continue
                try:
                    remote_bus = _normal_bus_id(_text(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId))
                except nvml.NVMLError:
                    continue
                peer = by_bus.get(remote_bus)
                if peer and peer != uuid:
                    peers[uuid].add(peer)
                    peers[peer].add(uuid)
        # Every GPU on the NVSwitch fabric reaches every other one at full NVLink bandwidth.
        for uuid in on_nvswitch:
            peers[uuid] |= on_nvswitch - {uuid}
        return {u: (switch_group[u], frozenset(peers[u])) for _, _, u in usable}

    def _read_gpu(self, index: int, handle: Any, uuid: str) -> Gpu:
        nvml = self._nvml
        static = self._static.get(uuid, {})
        switch_group, peers = self._topology.get(uuid, ("", frozenset()))
        gpu = Gpu(
            uuid=uuid,
            index=index,
            model=static.get("model", "unknown"),
            memory_total=static.get("memory_total", 0),
            pci_bus_id=static.get("pci_bus_id", ""),
            numa_node=static.get("numa_node"),
            switch_group=switch_group,
            nvlink_peers=peers,
        )
        if handle is None or "error" in static:
            return replace(gpu, healthy=False, health_reason=f"NVML: {static.get('error', 'no handle')}")
        try:
            # A cheap call that fails with GPU_IS_LOST / Unknown when the GPU fell off the bus.
            nvml.nvmlDeviceGetMemoryInfo(handle)
            mig_enabled, mig_devices = self._read_mig(handle)
        except nvml.NVMLError as exc:
            return replace(gpu, healthy=False, health_reason=f"NVML: {exc}")
        return replace(gpu, mig_enabled=mig_enabled, mig_devices=mig_devices)

    def _read_mig(self, handle: Any) -> tuple[bool, tuple[MigDevice, ...]]:
        nvml = self._nvml
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(handle)
        except (nvml.NVMLError, AttributeError):
            return False, ()  # not MIG-capable (NotSupported) or not allowed to ask: a whole GPU
        if current != getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1):
            return False, ()
        devices = []
        for mig_index in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, mig_index)
            except nvml.NVMLError_NotFound:
                continue  # an empty slot
            devices.append(
                MigDevice(
                    uuid=_text(nvml.nvmlDeviceGetUUID(mig)),
                    index=mig_index,
                    memory_total=int(nvml.nvmlDeviceGetMemoryInfo(mig).total),
                    name=_text(nvml.nvmlDeviceGetName(mig)),
                )
            )
        return True, tuple(devices)

    def gpus(self) -> list[Gpu]:
        with self._lock:
            if self._handles is None:
                self._init()
            assert self._handles is not None
            return [self._read_gpu(index, handle, uuid) for index, handle, uuid in self._handles]

    def close(self) -> None:
        """Release NVML (the handles die with it)."""
        with self._lock:
            if self._handles is not None:
                with contextlib.suppress(self._nvml.NVMLError):
                    self._nvml.nvmlShutdown()
                self._handles = None
