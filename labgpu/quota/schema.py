"""The quota file's schema: which sections, entries and fields exist, what each accepts, and
the rules that span fields (unknown images and models, a guarantee above its limit, ...).

Pydantic models, strict about types and closed to unknown keys; sizes and durations in the
admins' units (:mod:`labgpu.units`). Pure: no files, no positions; :mod:`labgpu.quota.load`
turns what fails here into ``file:line:col`` lines.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from labgpu.quota.errors import KeyPath
from labgpu.units import format_duration, format_size, parse_duration, parse_size

# Where a rule's problem is: (path in the file, True if it is about the key rather than its value, message).
Problem = tuple[KeyPath, bool, str]


def _cached_for_scalars(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Memoise a validator for hashable scalars (a big file repeats ``64G`` and ``2h`` a lot)."""
    cached = functools.lru_cache(maxsize=1024)(lambda value, _type: check(value))  # _type: a hashable type

    def validate(value: Any) -> Any:
        if isinstance(value, (str, int, float)):
            return cached(value, type(value).__name__)  # the type keeps True, 1 and 1.0 apart
        return check(value)

    return validate


def _size(low: int, high: int) -> BeforeValidator:
    def check(value: Any) -> int:
        try:
            size = parse_size(value)
        except ValueError as e:
            raise PydanticCustomError("size", str(e)) from None
        if not low <= size <= high:
            raise PydanticCustomError(
                "size_range", f"must be between {format_size(low)} and {format_size(high)} (got {value})"
            )
        return size

    return BeforeValidator(_cached_for_scalars(check))


def _duration(low: float, high: float, *, unlimited: bool = True) -> BeforeValidator:
    def check(value: Any) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            raise PydanticCustomError("duration", str(e)) from None
        if math.isinf(seconds):
            if unlimited:
                return seconds
            raise PydanticCustomError("duration_range", f"cannot be unlimited here (got {value!r})")
        if not low <= seconds <= high:
            allowed = f"between {format_duration(low)} and {format_duration(high)}"
            if unlimited:
                allowed += ", or unlimited"
            raise PydanticCustomError("duration_range", f"must be {allowed} (got {value})")
        return seconds

    return BeforeValidator(_cached_for_scalars(check))


# ---------------------------------------------------------------------------------------------
# The file's schema (pydantic). Every model forbids unknown keys and is strict about types.

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,254}$")
_IMAGE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VOLUME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_GPU_ID_RE = re.compile(r"^(GPU|MIG)-[0-9A-Za-z/-]+$")
_IMAGE_REF_RE = re.compile(r"^[^\s]{1,255}$")

MAX_GPUS_PER_SERVER = 64
MAX_GPUS_TOTAL = 256
MAX_POOL = 1024


def _string_list(value: Any) -> Any:
    """Allow a single string where a list is expected (``images: pytorch``)."""
    return [value] if isinstance(value, str) else value


def _models(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() == "any":
        return None
    return _string_list(value)


def _memory(value: Any) -> Any:
    """``memory: 16G`` is shorthand for ``memory: {limit: 16G}``."""
    return value if isinstance(value, Mapping) else {"limit": value}


def _shared_volume(value: Any) -> bool | str:
    if isinstance(value, bool) or (isinstance(value, str) and _VOLUME_RE.match(value)):
        return value
    raise PydanticCustomError(
        "shared_volume",
        f"must be true, false, or a Docker volume name (letters, digits, _ . -; no paths) (got {value!r})",
    )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


MemorySize = Annotated[int, _size(64 * 1024**2, 64 * 1024**4)]


class MemorySpec(_Strict):
    """The container's memory limit (OOM-kill above it) and an optional guarantee (soft limit)."""

    limit: MemorySize
    guarantee: MemorySize | None = None


class ImageSpec(_Strict):
    """One image users may choose: its Docker reference and the name shown on the spawn page."""

    image: Annotated[str, Field(pattern=_IMAGE_REF_RE.pattern)]
    display: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    description: Annotated[str, Field(max_length=1000)] | None = None


class GpuModelSpec(_Strict):
    """A GPU model users can ask for, recognised by substrings of NVML's device name."""

    match: Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_string_list), Field(min_length=1)]
    display: Annotated[str, Field(min_length=1, max_length=200)] | None = None


class GpusConfig(_Strict):
    """Which GPUs of the server the hub hands out, and the model names quota entries use."""

    exclude: Annotated[list[Annotated[str, Field(pattern=_GPU_ID_RE.pattern)]], BeforeValidator(_string_list)] = []
    models: dict[str, GpuModelSpec] = {}


class FairshareConfig(_Strict):
    """How past use lowers a user's priority, and when idle GPUs are taken back."""

    half_life: Annotated[float, _duration(3600, 365 * 86400, unlimited=False)] = 7 * 86400.0
    reclaim_idle_after: Annotated[float, _duration(60, 30 * 86400)] = 1800.0
    reclaim_only_when_waiting: bool = True
    allow_queue: bool = True


class LimitsEntry(_Strict):
    """One entry (``defaults``, ``groups.<name>``, ``users.<name>``); unset fields inherit."""

    gpus: Annotated[int, Field(ge=0, le=MAX_GPUS_PER_SERVER)] | None = None
    gpus_total: Annotated[int, Field(ge=0, le=MAX_GPUS_TOTAL)] | None = None
    models: Annotated[list[str] | None, BeforeValidator(_models)] = None
    memory: Annotated[MemorySpec, BeforeValidator(_memory)] | None = None
    cpus: Annotated[float, Field(ge=0.01, le=1024)] | None = None  # 0.01: Docker's smallest CPU limit
    shm: Annotated[int, _size(1024**2, 1024**4)] | None = None
    pids: Annotated[int, Field(ge=64, le=1_000_000)] | None = None
    images: Annotated[list[str], BeforeValidator(_string_list)] | None = None
    named_servers: Annotated[int, Field(ge=0, le=100)] | None = None
    idle_timeout: Annotated[float, _duration(60, 365 * 86400)] | None = None
    max_runtime: Annotated[float, _duration(60, 365 * 86400)] | None = None
    share: Annotated[float, Field(gt=0, le=1000)] | None = None
    disk: Annotated[int, _size(1024**2, 1024**5)] | None = None  # the user's home volume; unset: no limit


class GroupEntry(LimitsEntry):
    """A group's limits for each member, plus what the group holds together."""

    members: Annotated[list[str], BeforeValidator(_string_list)] = []
    pool: Annotated[int, Field(ge=0, le=MAX_POOL)] | None = None
    shared_volume: Annotated[bool | str, BeforeValidator(_shared_volume)] = False
    shared_disk: Annotated[int, _size(1024**2, 1024**5)] | None = None  # the shared folder; unset: no limit
    # Members who see the lab-usage page for this group (and, with sharing, manage it).
    managers: Annotated[list[str], BeforeValidator(_string_list)] = []


class PagesConfig(_Strict):
    """What the hub's pages show. ``show_names``: who sees which user holds or waits for a GPU on
    the GPU board: ``everyone`` (the default: labs want "who holds GPU 3?"), ``group`` (members of
    one of the holder's groups) or ``admins``; a user always sees their own."""

    show_names: Literal["everyone", "group", "admins"] = "everyone"


class PolicyFile(_Strict):
    """The whole quota file (or several files merged)."""

    images: dict[str, ImageSpec] = {}
    defaults: LimitsEntry = LimitsEntry()
    groups: dict[str, GroupEntry] = {}
    users: dict[str, LimitsEntry] = {}
    gpus: GpusConfig = GpusConfig()
    fairshare: FairshareConfig = FairshareConfig()
    pages: PagesConfig = PagesConfig()


# Allowed keys per kind of mapping, for "unknown key" messages.
ENTRY_KEYS = tuple(LimitsEntry.model_fields)
ALLOWED_KEYS: dict[str, tuple[str, ...]] = {
    "top": tuple(PolicyFile.model_fields),
    "entry": ENTRY_KEYS,
    "group": tuple(GroupEntry.model_fields),
    "image": tuple(ImageSpec.model_fields),
    "memory": tuple(MemorySpec.model_fields),
    "gpus": tuple(GpusConfig.model_fields),
    "model": tuple(GpuModelSpec.model_fields),
    "fairshare": tuple(FairshareConfig.model_fields),
    "pages": tuple(PagesConfig.model_fields),
}


def mapping_kind(path: KeyPath) -> str:
    """Which kind of mapping lives at ``path`` (for listing its allowed keys)."""
    n = len(path)
    if n == 0:
        return "top"
    head = path[0]
    if head == "defaults":
        return "entry" if n == 1 else "memory"
    if head in ("users", "groups"):
        if n == 2:
            return "group" if head == "groups" else "entry"
        return "memory"
    if head == "images":
        return "image"
    if head == "gpus":
        return "gpus" if n == 1 else "model"
    return str(head)


# ---------------------------------------------------------------------------------------------
# Rules across fields and entries, and the parts of an invalid file that can still be checked.


def cross_checks(spec: PolicyFile, errors: list[Problem]) -> None:
    """What pydantic cannot see: names that must exist, and values that contradict each other."""
    image_names = list(spec.images)
    model_names = list(spec.gpus.models)
    entries: list[tuple[KeyPath, LimitsEntry]] = [(("defaults",), spec.defaults)]
    entries += [(("groups", n), g) for n, g in spec.groups.items()]
    entries += [(("users", n), u) for n, u in spec.users.items()]
    for name in spec.images:
        if not _IMAGE_NAME_RE.match(name):
            message = f"image name {name!r} must be lowercase letters, digits, . _ - "
            errors.append((("images", name), True, message + "(it appears in spawn forms and API requests)"))
    for name in list(spec.users) + list(spec.groups):
        if not _NAME_RE.match(name):
            message = f"{name!r} is not a valid user or group name "
            message += "(letters, digits, . _ @ + -, starting with a letter or digit)"
            errors.append(((("users" if name in spec.users else "groups"), name), True, message))
    for name in model_names:
        if not _NAME_RE.match(name):
            message = f"GPU model name {name!r} must be letters, digits, . _ - (e.g. A100)"
            errors.append((("gpus", "models", name), True, message))
    for path, entry in entries:
        where = ".".join(path)
        for i, image in enumerate(entry.images or []):
            if image not in spec.images:
                known = ", ".join(image_names) or "none: add an images: section"
                message = f"unknown image {image!r} in {where}.images (defined images: {known})"
                errors.append(((*path, "images", i), False, message))
        for i, model in enumerate(entry.models or []):
            if model not in spec.gpus.models:
                known = ", ".join(model_names) or "none: define them under gpus.models"
                message = f"unknown GPU model {model!r} in {where}.models (defined models: {known}, or 'any')"
                errors.append(((*path, "models", i), False, message))
        if entry.gpus is not None and entry.gpus_total is not None and entry.gpus_total < entry.gpus:
            message = f"{where}.gpus_total ({entry.gpus_total}) is below gpus per server ({entry.gpus}); "
            errors.append(((*path, "gpus_total"), False, message + f"make it >= {entry.gpus}"))
        memory = entry.memory
        if memory is not None and memory.guarantee is not None and memory.guarantee > memory.limit:
            message = f"{where}.memory.guarantee ({format_size(memory.guarantee)}) "
            message += f"is above the limit ({format_size(memory.limit)})"
            errors.append(((*path, "memory", "guarantee"), False, message))
        if memory is not None and entry.shm is not None and entry.shm > memory.limit:
            message = f"{where}.shm ({format_size(entry.shm)}) is above the memory limit "
            message += f"({format_size(memory.limit)}); /dev/shm counts against memory"
            errors.append(((*path, "shm"), False, message))
    for name, group in spec.groups.items():
        if group.shared_volume is True and not _VOLUME_RE.match(name):
            message = f"groups.{name}.shared_volume: true names the folder's Docker volume after the group, "
            message += f"but {name!r} cannot be part of a volume name (letters, digits, _ . - only); "
            suggestion = re.sub(r"[^A-Za-z0-9_.-]", "-", name)
            errors.append((("groups", name, "shared_volume"), False, message + f"name it: shared_volume: {suggestion}"))
        seen: set[str] = set()
        for i, member in enumerate(group.members):
            if member in seen:
                errors.append((("groups", name, "members", i), False, f"groups.{name}.members lists {member!r} twice"))
            seen.add(member)
            if not _NAME_RE.match(member):
                message = f"groups.{name}.members: {member!r} is not a valid user name"
                errors.append((("groups", name, "members", i), False, message))
        if group.pool is not None and group.gpus is not None and group.pool < group.gpus and group.pool > 0:
            message = f"groups.{name}.pool ({group.pool}) is below gpus per server ({group.gpus}); "
            errors.append((("groups", name, "pool"), False, message + "no member could ever start such a server"))


def _valid_fields(model: type[BaseModel], entry: Any) -> Any:
    """The entry with only its individually valid fields (None if nothing can be kept)."""
    try:
        return model.model_validate(entry)
    except ValidationError:
        pass
    if not isinstance(entry, dict) or model is ImageSpec:
        return None
    fields = {}
    for key, value in entry.items():
        if key in model.model_fields:
            try:
                fields[key] = getattr(model.model_validate({key: value}), key)
            except ValidationError:
                continue
    return model.model_construct(**fields)


def valid_parts(data: Any) -> PolicyFile:
    """The entries that are valid on their own, so that cross-checks (unknown images, ...)
    are reported together with type errors elsewhere in the file."""
    if not isinstance(data, dict):
        return PolicyFile()
    parts: dict[str, Any] = {}
    sections: dict[str, type[BaseModel]] = {"images": ImageSpec, "groups": GroupEntry, "users": LimitsEntry}
    for section, model in sections.items():
        content = data.get(section)
        if isinstance(content, dict):
            valid = {}
            for name, entry in content.items():
                part = _valid_fields(model, entry)
                if part is not None:
                    valid[str(name)] = part
            parts[section] = valid
    defaults = _valid_fields(LimitsEntry, data.get("defaults") or {})
    if defaults is not None:
        parts["defaults"] = defaults
    for section, model in (("gpus", GpusConfig),):
        try:
            parts[section] = model.model_validate(data.get(section) or {})
        except ValidationError:
            if section == "gpus" and isinstance(data.get("gpus"), dict):
                models = data["gpus"].get("models")
                if isinstance(models, dict):
                    parts["gpus"] = GpusConfig.model_construct(
                        exclude=[], models={str(k): v for k, v in models.items()}
                    )
    return PolicyFile.model_construct(**parts)
