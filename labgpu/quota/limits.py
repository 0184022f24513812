"""A validated policy, and what it gives one user: :func:`resolve` -> :class:`Limits`.

Field by field: the user's own entry > the most generous of the user's groups > ``defaults`` >
built-in defaults. :func:`user_groups` is the one answer to "which groups is this user in",
for the spawner, the GPU queue, the reclaimer and ``labgpu usage`` alike. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from labgpu.quota.schema import ENTRY_KEYS, LimitsEntry, PolicyFile

# Fields of LimitsEntry, and how two groups' values combine into "the most generous".

BUILTIN_DEFAULTS: dict[str, Any] = {
    "gpus": 0,
    "gpus_total": None,  # None: the same as gpus
    "models": None,  # None: any model
    "memory_limit": 16 * 1024**3,
    "memory_guarantee": None,
    "cpus": 4.0,
    "shm": 2 * 1024**3,
    "pids": 4096,
    "images": None,  # None: every image of the catalogue
    "named_servers": 0,
    "idle_timeout": math.inf,
    "max_runtime": math.inf,
    "share": 1.0,
    "disk": None,  # None: the home volume may grow without a limit
}
BUILTIN = "built-in default"


@dataclass(frozen=True)
class ImageChoice:
    """An image a user may pick: the name used in the file and forms, the Docker reference, the label."""

    name: str
    image: str
    display: str


@dataclass(frozen=True)
class Limits:
    """What one user may use, resolved from the policy; ``sources[field]`` names the entry each
    value came from (``users.alice``, ``groups.vision-lab``, ``defaults``, ``built-in default``)."""

    user: str
    groups: tuple[str, ...]  # the policy's groups the user is in (given by the hub or via members)
    gpus: int  # per server
    gpus_total: int  # across all of the user's running servers
    models: tuple[str, ...] | None  # allowed GPU model names; None = any GPU
    memory: int  # bytes, the container's hard limit
    memory_guarantee: int | None  # bytes, soft reservation; never above memory
    cpus: float
    shm: int  # bytes of /dev/shm
    pids: int
    images: tuple[ImageChoice, ...]  # empty: no choice, the spawner's configured image
    default_image: str | None  # name of the preselected image
    named_servers: int  # named servers besides the default one
    idle_timeout: int | None  # seconds; None = never culled for idleness
    max_runtime: int | None  # seconds; None = no limit
    share: float  # fair-share weight
    disk: int | None  # bytes the home volume may hold (spawns are refused above it); None = no limit
    pools: Mapping[str, int] = field(default_factory=dict)  # group -> GPUs the whole group may hold
    # group -> its shared folder's name (the group's own for `shared_volume: true`); the hub
    # keeps it in the Docker volume <hub_id>-group-<name> (labgpu.hub.shared_folders)
    shared_volumes: Mapping[str, str] = field(default_factory=dict)
    shared_disks: Mapping[str, int] = field(default_factory=dict)  # group -> bytes its shared folder may hold
    known_models: Mapping[str, str] = field(default_factory=dict)  # the policy's GPU models: name -> display
    sources: Mapping[str, str] = field(default_factory=dict)

    def image(self, name: str) -> ImageChoice | None:
        """The allowed image called ``name`` (or with that Docker reference), else None."""
        for choice in self.images:
            if choice.name == name:
                return choice
        for choice in self.images:
            if choice.image == name:
                return choice
        return None


@dataclass(frozen=True)
class Policy:
    """A validated quota policy: the parsed file(s), with quick lookups for :func:`resolve`."""

    spec: PolicyFile
    files: tuple[str, ...] = ()
    member_groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # user -> groups listing them
    entries: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # "users.x"/"groups.y"/"defaults" -> set fields
    known_models: Mapping[str, str] = field(default_factory=dict)  # GPU model name -> display name
    # Group combination -> (values, sources, extras) before the user's own entry, and image
    # lists -> choices; filled by resolve().
    _group_cache: dict[tuple[str, ...], tuple[dict[str, Any], dict[str, str], dict[str, Any]]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _image_cache: dict[Any, tuple[tuple[ImageChoice, ...], str | None]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def gpu_model_of(self, device_name: str) -> str | None:
        """The policy's model name for an NVML device name (``NVIDIA A100-SXM4-80GB`` -> ``A100``)."""
        lowered = device_name.lower()
        for name, spec in self.spec.gpus.models.items():
            if any(pattern.lower() in lowered for pattern in spec.match):
                return name
        return None


def _entry_fields(entry: LimitsEntry) -> dict[str, Any]:
    """The fields an entry sets, flattened (memory -> memory_limit / memory_guarantee)."""
    values: dict[str, Any] = {}
    for name in entry.model_fields_set:
        if name not in ENTRY_KEYS:
            continue
        value = getattr(entry, name)
        if value is None:
            if name == "models":
                values["models"] = None  # written as "any"
            continue
        if name == "memory":
            values["memory_limit"] = value.limit
            if value.guarantee is not None:
                values["memory_guarantee"] = value.guarantee
        else:
            values[name] = value
    return values


def _more_generous(name: str, current: Any, candidate: Any) -> Any:
    if name in ("images", "models"):
        if current is None or candidate is None:
            return None if name == "models" else (candidate if current is None else current)
        return current + [x for x in candidate if x not in current]
    return candidate if candidate > current else current


def user_groups(policy: Policy, user: str, hub_groups: Iterable[str] = ()) -> tuple[str, ...]:
    """Which of the policy's groups ``user`` is in: those whose ``members:`` list the user, and
    those of ``hub_groups`` (the user's JupyterHub groups) that the policy defines without a
    ``members:`` list; sorted.

    The one answer to "which groups is this user in" for the spawner, the GPU queue, the
    reclaimer and ``labgpu usage``: a hub group the policy does not know gives no limits, and a
    group whose members the files list is theirs alone (a hub membership left from before an
    edit gives nothing; the hub's groups are synced to :func:`listed_members`)."""
    known = policy.spec.groups
    listed = policy.member_groups.get(user, ())
    from_hub = {g for g in hub_groups if g in known and "members" not in known[g].model_fields_set}
    return tuple(sorted(from_hub.union(listed)))


def listed_members(policy: Policy) -> dict[str, tuple[str, ...]]:
    """The groups whose ``members:`` the quota files list (``members: []`` too), with them: the
    hub's membership of these groups is made to match (:mod:`labgpu.hub.group_sync`)."""
    return {name: tuple(g.members) for name, g in policy.spec.groups.items() if "members" in g.model_fields_set}


def resolve(policy: Policy, user: str, groups: Iterable[str] = ()) -> Limits:
    """The limits for ``user`` in ``groups`` (the hub's groups; the policy's ``members`` lists
    are added, see :func:`user_groups`): field by field, user entry > most generous group >
    defaults > built-in."""
    spec = policy.spec
    entries = policy.entries
    in_groups = user_groups(policy, user, groups)
    cached = policy._group_cache.get(in_groups)
    if cached is None:
        values, sources = _group_values(policy, in_groups)
        cached = policy._group_cache[in_groups] = (values, sources, _group_extras(spec, in_groups))
    values, sources, extras = cached
    sources = dict(sources)
    own = entries.get(f"users.{user}")
    if own:
        values = {**values, **own}
        source = f"users.{user}"
        for name in own:
            sources["memory" if name == "memory_limit" else name] = source
    return _limits(policy, user, values, sources, extras)


def _group_extras(spec: PolicyFile, in_groups: tuple[str, ...]) -> dict[str, Any]:
    """What a group combination gives every member alike: pools, shared volumes."""
    volumes = {}
    for g in in_groups:
        shared = spec.groups[g].shared_volume
        if shared is True:
            volumes[g] = g
        elif isinstance(shared, str):
            volumes[g] = shared
    return {
        "groups": in_groups,
        "pools": {g: spec.groups[g].pool for g in in_groups if spec.groups[g].pool is not None},
        "shared_volumes": volumes,
        "shared_disks": {g: spec.groups[g].shared_disk for g in volumes if spec.groups[g].shared_disk is not None},
    }


def _group_values(policy: Policy, in_groups: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """Values and their sources from built-ins, defaults and the most generous of the groups."""
    entries = policy.entries
    values = dict(BUILTIN_DEFAULTS)
    sources = dict.fromkeys(values, BUILTIN)
    defaults = entries.get("defaults", {})
    values.update(defaults)
    for name in defaults:
        sources[name] = "defaults"
    group_values: dict[str, Any] = {}
    group_sources: dict[str, str] = {}
    for group in in_groups:
        for name, value in entries[f"groups.{group}"].items():
            if name not in group_values:
                group_values[name] = value
                group_sources[name] = f"groups.{group}"
                continue
            best = _more_generous(name, group_values[name], value)
            if name in ("images", "models"):
                if best != group_values[name]:
                    group_sources[name] += f"+groups.{group}"
            elif best is not group_values[name] and best != group_values[name]:
                group_sources[name] = f"groups.{group}"
            group_values[name] = best
    values.update(group_values)
    sources.update(group_sources)
    sources["memory"] = sources.pop("memory_limit")
    return values, sources


def _image_choices(policy: Policy, image_names: list[str] | None) -> tuple[tuple[ImageChoice, ...], str | None]:
    key = None if image_names is None else tuple(image_names)
    cached = policy._image_cache.get(key)
    if cached is not None:
        return cached
    catalogue = policy.spec.images
    names = list(catalogue) if image_names is None else image_names
    allowed = set(names)
    choices = tuple(ImageChoice(n, img.image, img.display or n) for n, img in catalogue.items() if n in allowed)
    default_image = next((n for n in names if n in catalogue), None)
    policy._image_cache[key] = (choices, default_image)
    return choices, default_image


def _limits(
    policy: Policy, user: str, values: dict[str, Any], sources: dict[str, str], extras: dict[str, Any]
) -> Limits:
    gpus = values["gpus"]
    total = values["gpus_total"]
    if total is None or total < gpus:
        # A total below the per-server maximum would make that maximum unreachable.
        if total is None:
            sources["gpus_total"] = sources["gpus"]
        total = gpus
    memory = values["memory_limit"]
    guarantee = values["memory_guarantee"]
    if guarantee is not None and guarantee > memory:
        guarantee = memory
    choices, default_image = _image_choices(policy, values["images"])
    models = values["models"]
    if models is not None:
        models = tuple(models)
    return Limits(
        user=user,
        groups=extras["groups"],
        gpus=gpus,
        gpus_total=total,
        models=models,
        memory=memory,
        memory_guarantee=guarantee,
        cpus=float(values["cpus"]),
        shm=values["shm"],
        pids=values["pids"],
        images=choices,
        default_image=default_image,
        named_servers=values["named_servers"],
        idle_timeout=None if math.isinf(values["idle_timeout"]) else int(values["idle_timeout"]),
        max_runtime=None if math.isinf(values["max_runtime"]) else int(values["max_runtime"]),
        share=float(values["share"]),
        disk=values["disk"],
        pools=extras["pools"],
        shared_volumes=extras["shared_volumes"],
        shared_disks=extras["shared_disks"],
        known_models=policy.known_models,
        sources=sources,
    )


def build_policy(spec: PolicyFile, files: Sequence[str]) -> Policy:
    """The policy of a validated file, with the lookups :func:`resolve` needs prepared."""
    member_groups: dict[str, list[str]] = {}
    for name, group in spec.groups.items():
        for member in group.members:
            member_groups.setdefault(member, []).append(name)
    entries: dict[str, dict[str, Any]] = {"defaults": _entry_fields(spec.defaults)}
    for name, group in spec.groups.items():
        entries[f"groups.{name}"] = _entry_fields(group)
    for name, user in spec.users.items():
        entries[f"users.{name}"] = _entry_fields(user)
    return Policy(
        spec=spec,
        files=tuple(files),
        member_groups={u: tuple(g) for u, g in member_groups.items()},
        entries=entries,
        known_models={name: m.display or name for name, m in spec.gpus.models.items()},
    )


def jupyterhub_groups(policy: Policy) -> dict[str, dict[str, list[str]]]:
    """The policy's groups with their listed members, in the form of JupyterHub's
    ``c.JupyterHub.load_groups`` (``{group: {"users": [...]}}``), to sync them into the hub."""
    return {name: {"users": list(group.members)} for name, group in policy.spec.groups.items()}
