"""GPU inventory: which GPUs this host has, behind one interface with three sources.

``NvmlInventory`` asks the driver (the real one), ``StaticInventory`` reads a list from the
configuration (a hub that cannot see the GPUs), ``ReplayInventory`` replays recorded
snapshots (tests). GPUs are identified by UUID: NVML's indices change across reboots.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from labgpu.units import parse_size

__all__ = [
    "Gpu",
    "GpuInventorySource",
    "InventoryError",
    "MigDevice",
    "NvmlInventory",
    "ReplayInventory",
    "StaticInventory",
    "gpu_to_dict",
    "inventory_source",
    "mig_units",
    "parse_memory",
    "short_uuid",
]


class InventoryError(ValueError):
    """The inventory could not be read; the message says where and what to do."""


@dataclass(frozen=True)
class MigDevice:
    """One MIG instance of a GPU in MIG mode (CDI name ``nvidia.com/gpu=<gpu>:<index>``)."""

    uuid: str
    index: int
    memory_total: int  # bytes
    name: str = ""  # NVML's name for it, e.g. "NVIDIA A100-SXM4-40GB MIG 1g.5gb"


@dataclass(frozen=True)
class Gpu:
    """One physical GPU as the allocator sees it: identity, size, health and interconnect."""

    uuid: str
    index: int
    model: str
    memory_total: int  # bytes
    healthy: bool = True
    health_reason: str = ""  # why it is unhealthy, for admins ("GPU is lost")
    mig_enabled: bool = False
    mig_devices: tuple[MigDevice, ...] = ()
    pci_bus_id: str = ""
    numa_node: int | None = None
    # GPUs with the same switch_group sit under one PCIe switch ("" = unknown).
    switch_group: str = ""
    # UUIDs of GPUs this one reaches over NVLink (directly or through NVSwitch).
    nvlink_peers: frozenset[str] = field(default_factory=frozenset)
    # Set on a MIG slice made allocatable by mig_units(): the parent GPU's UUID and slice index.
    mig_parent: str = ""
    mig_index: int | None = None

    @property
    def label(self) -> str:
        """``3`` for a GPU, ``3:1`` for MIG slice 1 of GPU 3 (CDI's index naming)."""
        return str(self.index) if self.mig_index is None else f"{self.index}:{self.mig_index}"

    @property
    def short_uuid(self) -> str:
        """``GPU-3f2a…``: enough to tell GPUs apart in messages and tables."""
        return short_uuid(self.uuid)


def short_uuid(uuid: str) -> str:
    """``GPU-3f2a…`` for ``GPU-3f2a9c1e-…``: enough to tell GPUs apart in messages and tables."""
    return uuid[:8] + "…" if len(uuid) > 9 else uuid


def mig_units(gpu: Gpu) -> list[Gpu]:
    """The MIG slices of a GPU in MIG mode as allocatable units (none for a whole GPU).

    A slice has the parent's index, health, PCIe switch and NUMA node, and no NVLink peers.
    """
    if not gpu.mig_enabled:
        return []
    return [
        Gpu(
            uuid=mig.uuid,
            index=gpu.index,
            model=mig.name or f"{gpu.model} MIG",
            memory_total=mig.memory_total,
            healthy=gpu.healthy,
            health_reason=gpu.health_reason,
            pci_bus_id=gpu.pci_bus_id,
            numa_node=gpu.numa_node,
            switch_group=gpu.switch_group,
            mig_parent=gpu.uuid,
            mig_index=mig.index,
        )
        for mig in gpu.mig_devices
    ]


class GpuInventorySource(Protocol):
    """Anything that can list this host's GPUs."""

    def gpus(self) -> list[Gpu]: ...


# --- plain-data form (static config, replay files) ---------------------------------------


def parse_memory(value: Any) -> int:
    """``80G``, ``81920M``, ``80GiB`` or a number of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValueError(f"memory must be a size like 80G or a number of bytes (got {value!r})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"memory must be >= 0 (got {value})")
        return value
    try:
        return parse_size(str(value))  # labgpu.units: the same grammar as the quota files
    except ValueError:
        raise ValueError(f"memory must be a size like 80G, 81920M or a number of bytes (got {value!r})") from None


def gpu_to_dict(gpu: Gpu) -> dict[str, Any]:
    """The JSON/YAML form of a GPU (what ``ReplayInventory`` and ``StaticInventory`` read)."""
    data = asdict(gpu)
    data["nvlink_peers"] = sorted(gpu.nvlink_peers)
    data["mig_devices"] = [asdict(m) for m in gpu.mig_devices]
    return data


_GPU_FIELDS = {
    "uuid",
    "index",
    "model",
    "memory_total",
    "memory",
    "healthy",
    "health_reason",
    "mig_enabled",
    "mig_devices",
    "pci_bus_id",
    "numa_node",
    "switch_group",
    "nvlink_peers",
    "nvlink_group",
    "mig_parent",
    "mig_index",
}


def _where(source: str, node: Any, key: Any = None) -> str:
    """``file:line:col`` of a key (or of the node) when the YAML parser recorded it."""
    lc = getattr(node, "lc", None)
    try:
        if lc is not None and key is not None:
            line, col = lc.key(key) if isinstance(key, str) else lc.item(key)
            return f"{source}:{line + 1}:{col + 1}"
        if lc is not None:
            return f"{source}:{lc.line + 1}:{lc.col + 1}"
    except (KeyError, IndexError, TypeError):
        pass
    return source


def _gpu_from_mapping(entry: Any, position: int, source: str, path: str) -> tuple[Gpu, str]:
    """One GPU from its dict form; returns the GPU and its ``nvlink_group`` ("" if none)."""
    here = f"{path}[{position}]"
    if not isinstance(entry, Mapping):
        raise InventoryError(f"{_where(source, entry)}: {here} must be a mapping with uuid, model, memory")
    unknown = sorted(set(entry) - _GPU_FIELDS)
    if unknown:
        raise InventoryError(
            f"{_where(source, entry, unknown[0])}: {here}.{unknown[0]} is not a GPU field; "
            f"allowed: {', '.join(sorted(_GPU_FIELDS))}"
        )
    uuid = entry.get("uuid")
    if not isinstance(uuid, str) or not uuid.strip() or "," in uuid:
        raise InventoryError(
            f"{_where(source, entry, 'uuid' if 'uuid' in entry else None)}: {here}.uuid must be the GPU's "
            f"UUID as nvidia-smi -L prints it, e.g. GPU-3f2a9c1e-… (got {uuid!r})"
        )

    def field_error(name: str, message: str) -> InventoryError:
        return InventoryError(f"{_where(source, entry, name)}: {here}.{name} {message}")

    index = entry.get("index", position)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise field_error("index", f"must be an integer >= 0 (got {index!r})")
    memory_key = "memory_total" if "memory_total" in entry else "memory"
    try:
        memory_total = parse_memory(entry.get(memory_key, 0))
    except ValueError as exc:
        raise field_error(memory_key, str(exc).removeprefix("memory ")) from None
    healthy = entry.get("healthy", True)
    if not isinstance(healthy, bool):
        raise field_error("healthy", f"must be true or false (got {healthy!r})")
    numa = entry.get("numa_node")
    if numa is not None and (isinstance(numa, bool) or not isinstance(numa, int)):
        raise field_error("numa_node", f"must be an integer or absent (got {numa!r})")
    peers = entry.get("nvlink_peers", [])
    if not isinstance(peers, (list, tuple)) or not all(isinstance(p, str) for p in peers):
        raise field_error("nvlink_peers", "must be a list of GPU UUIDs")
    migs = []
    for mig_position, mig in enumerate(entry.get("mig_devices") or []):
        if not isinstance(mig, Mapping) or not isinstance(mig.get("uuid"), str):
            raise field_error("mig_devices", f"[{mig_position}] must be a mapping with a uuid (MIG-…)")
        try:
            mig_memory = parse_memory(mig.get("memory_total", mig.get("memory", 0)))
        except ValueError as exc:
            raise field_error("mig_devices", f"[{mig_position}]: {exc}") from None
        migs.append(
            MigDevice(
                uuid=mig["uuid"],
                index=int(mig.get("index", mig_position)),
                memory_total=mig_memory,
                name=str(mig.get("name", "")),
            )
        )
    gpu = Gpu(
        uuid=uuid.strip(),
        index=index,
        model=str(entry.get("model", "unknown")),
        memory_total=memory_total,
        healthy=healthy,
        health_reason=str(entry.get("health_reason", "") or ("" if healthy else "marked unhealthy")),
        mig_enabled=bool(entry.get("mig_enabled", bool(migs))),
        mig_devices=tuple(migs),
        pci_bus_id=str(entry.get("pci_bus_id", "")),
        numa_node=numa,
        switch_group=str(entry.get("switch_group", "") or ""),
        nvlink_peers=frozenset(peers),
        mig_parent=str(entry.get("mig_parent", "") or ""),
        mig_index=entry.get("mig_index"),
    )
    return gpu, str(entry.get("nvlink_group", "") or "")


def gpus_from_dicts(entries: Any, source: str = "<config>", path: str = "gpus") -> list[Gpu]:
    """Validate a list of GPU mappings into ``Gpu`` objects, with ``file:line:col`` errors.

    ``nvlink_group: a`` is shorthand for "NVLink peers of every other GPU in group a".
    """
    if not isinstance(entries, Sequence) or isinstance(entries, (str, bytes)):
        raise InventoryError(f"{_where(source, entries)}: {path} must be a list of GPUs")
    parsed = [_gpu_from_mapping(entry, i, source, path) for i, entry in enumerate(entries)]
    seen: dict[str, int] = {}
    for i, (gpu, _) in enumerate(parsed):
        if gpu.uuid in seen:
            raise InventoryError(
                f"{_where(source, entries[i], 'uuid')}: {path}[{i}].uuid {gpu.uuid} is already "
                f"listed at {path}[{seen[gpu.uuid]}]; each GPU once"
            )
        seen[gpu.uuid] = i
    groups: dict[str, set[str]] = {}
    for gpu, group in parsed:
        if group:
            groups.setdefault(group, set()).add(gpu.uuid)
    result = []
    for gpu, group in parsed:
        peers = set(gpu.nvlink_peers) | (groups.get(group, set()) if group else set())
        peers.discard(gpu.uuid)
        result.append(_replace_peers(gpu, frozenset(peers)))
    # NVLink is symmetric: a peer listed on one side only is a peer of both.
    peer_map = {g.uuid: set(g.nvlink_peers) for g in result}
    for uuid, peers in list(peer_map.items()):
        for peer in peers:
            if peer in peer_map:
                peer_map[peer].add(uuid)
    return [_replace_peers(g, frozenset(peer_map[g.uuid])) for g in result]


def _replace_peers(gpu: Gpu, peers: frozenset[str]) -> Gpu:
    return replace(gpu, nvlink_peers=peers)


def _load_document(path: Path) -> Any:
    """Read YAML or JSON (JSON is YAML) keeping line numbers for error messages."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read the GPU inventory file: {exc.strerror}") from None
    try:
        return YAML(typ="rt").load(io.StringIO(text))
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise InventoryError(f"{where}: not valid YAML/JSON: {getattr(exc, 'problem', exc)}") from None


class StaticInventory:
    """GPUs listed in the configuration, for a hub that cannot see the GPUs itself."""

    def __init__(self, entries: Iterable[Mapping[str, Any]] | Sequence[Gpu], source: str = "<config>"):
        entries = list(entries)
        if entries and all(isinstance(e, Gpu) for e in entries):
            self._gpus = list(entries)  # type: ignore[arg-type]
        else:
            self._gpus = gpus_from_dicts(entries, source)

    @classmethod
    def from_file(cls, path: str | Path) -> StaticInventory:
        """A YAML or JSON file holding a list of GPUs, or a mapping with a ``gpus:`` list."""
        path = Path(path)
        document = _load_document(path)
        entries = document.get("gpus") if isinstance(document, Mapping) else document
        if entries is None:
            raise InventoryError(f"{path}: expected a list of GPUs or a mapping with a 'gpus:' list")
        return cls(entries, source=str(path))

    def gpus(self) -> list[Gpu]:
        return list(self._gpus)


class ReplayInventory:
    """Recorded inventory snapshots, returned one per call (the last one repeats); for tests.

    The file is ``{"gpus": [...]}`` (one snapshot) or ``{"snapshots": [{"gpus": [...]}, ...]}``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        document = _load_document(self.path)
        source = str(self.path)
        if isinstance(document, Mapping) and "snapshots" in document:
            snapshots = document["snapshots"]
            if not isinstance(snapshots, Sequence) or not snapshots:
                raise InventoryError(f"{_where(source, document, 'snapshots')}: snapshots must be a non-empty list")
            self._snapshots = [
                gpus_from_dicts(s.get("gpus") if isinstance(s, Mapping) else s, source, f"snapshots[{i}].gpus")
                for i, s in enumerate(snapshots)
            ]
        elif isinstance(document, Mapping) and "gpus" in document:
            self._snapshots = [gpus_from_dicts(document["gpus"], source)]
        else:
            raise InventoryError(f"{source}: expected a mapping with 'gpus' or 'snapshots'")
        self.description = str(document.get("description", "")) if isinstance(document, Mapping) else ""
        self._next = 0
        self._lock = threading.Lock()

    def gpus(self) -> list[Gpu]:
        with self._lock:
            snapshot = self._snapshots[min(self._next, len(self._snapshots) - 1)]
            self._next += 1
        return list(snapshot)


# --- NVML -----------------------------------------------------------------------------------


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
                import pynvml as nvml  # nvidia-ml-py
            except ImportError:  # pragma: no cover - it is a dependency
                raise InventoryError("nvidia-ml-py is not installed; pip install nvidia-ml-py") from None
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
        base = dict(
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
            return Gpu(**base, healthy=False, health_reason=f"NVML: {static.get('error', 'no handle')}")
        try:
            # A cheap call that fails with GPU_IS_LOST / Unknown when the GPU fell off the bus.
            nvml.nvmlDeviceGetMemoryInfo(handle)
            mig_enabled, mig_devices = self._read_mig(handle)
        except nvml.NVMLError as exc:
            return Gpu(**base, healthy=False, health_reason=f"NVML: {exc}")
        return Gpu(**base, mig_enabled=mig_enabled, mig_devices=mig_devices)

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


def inventory_source(spec: str) -> GpuInventorySource:
    """``nvml``, ``static:FILE`` or ``replay:FILE`` -> a source (the CLI's and config's syntax)."""
    kind, _, argument = spec.partition(":")
    if kind == "nvml" and not argument:
        return NvmlInventory()
    if kind == "static" and argument:
        return StaticInventory.from_file(argument)
    if kind == "replay" and argument:
        return ReplayInventory(argument)
    raise InventoryError(f"GPU inventory source {spec!r} is not one of: nvml, static:FILE, replay:FILE")
