"""GPU inventory: the :class:`Gpu` model, its plain-data forms, and the sources that list GPUs.

Every source answers ``gpus()`` with the same ``Gpu`` objects: ``NvmlInventory``
(``labgpu.gpus.nvml``) asks the driver, ``StaticInventory`` reads a list from the configuration
(a hub that cannot see the GPUs), ``ReplayInventory`` replays recorded snapshots (tests). GPUs
are identified by UUID: NVML's indices change across reboots.

A GPU's fields are listed once, in the dataclass: the dict/YAML form (:func:`gpu_to_dict`, the
static reader) and the flat form a table row stores (:func:`gpu_to_row`, :func:`gpu_from_row`)
are derived from ``dataclasses.fields(Gpu)``, so a new field travels everywhere by itself.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
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
    "ReplayInventory",
    "StaticInventory",
    "gpu_from_row",
    "gpu_to_dict",
    "gpu_to_row",
    "gpus_from_dicts",
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
        replace(
            gpu,
            uuid=mig.uuid,
            model=mig.name or f"{gpu.model} MIG",
            memory_total=mig.memory_total,
            mig_enabled=False,
            mig_devices=(),
            nvlink_peers=frozenset(),
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
    """``80G``, ``81920M``, ``80GiB`` or a number of bytes -> bytes (``labgpu.units``' size grammar)."""
    try:
        return parse_size(value)
    except ValueError:
        raise ValueError(f"memory must be a size like 80G, 81920M or a number of bytes (got {value!r})") from None


_FIELDS = tuple(f.name for f in fields(Gpu))
_TEXT_FIELDS = frozenset(f.name for f in fields(Gpu) if f.type == "str")
_FLAG_FIELDS = frozenset(f.name for f in fields(Gpu) if f.type == "bool")
# What a hand-written GPU mapping may hold: the fields, plus ``memory`` (for ``memory_total``)
# and ``nvlink_group`` (shorthand for NVLink peers, see gpus_from_dicts).
_MAPPING_KEYS = frozenset(_FIELDS) | {"memory", "nvlink_group"}


def gpu_to_dict(gpu: Gpu) -> dict[str, Any]:
    """The JSON/YAML form of a GPU (what ``ReplayInventory`` and ``StaticInventory`` read)."""
    data = asdict(gpu)
    data["mig_devices"] = list(data["mig_devices"])
    data["nvlink_peers"] = sorted(gpu.nvlink_peers)
    return data


def gpu_to_row(gpu: Gpu) -> dict[str, Any]:
    """The flat form a table row stores: one scalar per field, MIG devices and NVLink peers as JSON text."""
    data = gpu_to_dict(gpu)
    return {**data, "mig_devices": json.dumps(data["mig_devices"]), "nvlink_peers": json.dumps(data["nvlink_peers"])}


def gpu_from_row(row: Mapping[str, Any]) -> Gpu:
    """The GPU a :func:`gpu_to_row` row holds; other keys (a table's other columns) are ignored
    and a NULL text or flag reads as empty or false."""
    values = {name: row[name] for name in _FIELDS if name in row}
    values.update({name: values[name] or "" for name in _TEXT_FIELDS & values.keys()})
    values.update({name: bool(values[name]) for name in _FLAG_FIELDS & values.keys()})
    values["mig_devices"] = tuple(MigDevice(**m) for m in json.loads(values.get("mig_devices") or "[]"))
    values["nvlink_peers"] = frozenset(json.loads(values.get("nvlink_peers") or "[]"))
    return Gpu(**values)


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
    unknown = sorted(set(entry) - _MAPPING_KEYS)
    if unknown:
        raise InventoryError(
            f"{_where(source, entry, unknown[0])}: {here}.{unknown[0]} is not a GPU field; "
            f"allowed: {', '.join(sorted(_MAPPING_KEYS))}"
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
    # Fields without a rule of their own are taken as written (text fields as text).
    values = {name: entry[name] for name in _FIELDS if name in entry}
    values.update({name: str(values[name] or "") for name in _TEXT_FIELDS & values.keys()})
    values.update(
        uuid=uuid.strip(),
        index=index,
        model=str(entry.get("model", "unknown")),
        memory_total=memory_total,
        healthy=healthy,
        health_reason=values.get("health_reason") or ("" if healthy else "marked unhealthy"),
        mig_enabled=bool(entry.get("mig_enabled", bool(migs))),
        mig_devices=tuple(migs),
        numa_node=numa,
        nvlink_peers=frozenset(peers),
    )
    gpu = Gpu(**values)
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

    def __init__(self, entries: Iterable[Mapping[str, Any]] | Iterable[Gpu], source: str = "<config>"):
        listed = list(entries)
        if listed and all(isinstance(e, Gpu) for e in listed):
            self._gpus: list[Gpu] = [e for e in listed if isinstance(e, Gpu)]
        else:
            self._gpus = gpus_from_dicts(listed, source)

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


def inventory_source(spec: str) -> GpuInventorySource:
    """``nvml``, ``static:FILE``, ``replay:FILE`` or ``simulated:PRESET`` -> a source (the CLI's and
    config's syntax)."""
    kind, _, argument = spec.partition(":")
    if kind == "nvml" and not argument:
        from labgpu.gpus.nvml import NvmlInventory  # here: labgpu.gpus.nvml builds on this module

        return NvmlInventory()
    if kind == "static" and argument:
        return StaticInventory.from_file(argument)
    if kind == "replay" and argument:
        return ReplayInventory(argument)
    if kind == "simulated" and argument:
        from labgpu.gpus.simulated import SimulatedInventory  # it builds on this module

        return SimulatedInventory(argument)
    raise InventoryError(
        f"GPU inventory source {spec!r} is not one of: nvml, static:FILE, replay:FILE, simulated:PRESET (e.g. 4xH100)"
    )
