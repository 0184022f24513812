"""Quota policy: the admins' ``quotas/*.yaml`` files, validated with file:line:col errors,
resolved per user into :class:`Limits`, and reloaded when they change.

Pure except for :class:`PolicyStore`, which only stats and reads the quota files. Resolution,
field by field: the user's own entry > the most generous of the user's groups > ``defaults``
> built-in defaults. See quotas/README.md for the admin-facing description.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from labgpu.units import format_duration, format_size, parse_duration, parse_size


def _cached_for_scalars(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Memoise a validator for hashable scalars (a big file repeats ``64G`` and ``2h`` a lot)."""
    cached = functools.lru_cache(maxsize=1024)(lambda value, _type: check(value))

    def validate(value: Any) -> Any:
        if isinstance(value, (str, int, float)):
            return cached(value, type(value))  # the type keeps True, 1 and 1.0 apart
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
    cpus: Annotated[float, Field(gt=0, le=1024)] | None = None
    shm: Annotated[int, _size(1024**2, 1024**4)] | None = None
    pids: Annotated[int, Field(ge=64, le=1_000_000)] | None = None
    images: Annotated[list[str], BeforeValidator(_string_list)] | None = None
    named_servers: Annotated[int, Field(ge=0, le=100)] | None = None
    idle_timeout: Annotated[float, _duration(60, 365 * 86400)] | None = None
    max_runtime: Annotated[float, _duration(60, 365 * 86400)] | None = None
    share: Annotated[float, Field(gt=0, le=1000)] | None = None


class GroupEntry(LimitsEntry):
    """A group's limits for each member, plus what the group holds together."""

    members: Annotated[list[str], BeforeValidator(_string_list)] = []
    pool: Annotated[int, Field(ge=0, le=MAX_POOL)] | None = None
    shared_volume: Annotated[bool | str, BeforeValidator(_shared_volume)] = False


class PolicyFile(_Strict):
    """The whole quota file (or several files merged)."""

    images: dict[str, ImageSpec] = {}
    defaults: LimitsEntry = LimitsEntry()
    groups: dict[str, GroupEntry] = {}
    users: dict[str, LimitsEntry] = {}
    gpus: GpusConfig = GpusConfig()
    fairshare: FairshareConfig = FairshareConfig()


# Allowed keys per kind of mapping, for "unknown key" messages.
_ENTRY_KEYS = tuple(LimitsEntry.model_fields)
_ALLOWED_KEYS: dict[str, tuple[str, ...]] = {
    "top": tuple(PolicyFile.model_fields),
    "entry": _ENTRY_KEYS,
    "group": tuple(GroupEntry.model_fields),
    "image": tuple(ImageSpec.model_fields),
    "memory": tuple(MemorySpec.model_fields),
    "gpus": tuple(GpusConfig.model_fields),
    "model": tuple(GpuModelSpec.model_fields),
    "fairshare": tuple(FairshareConfig.model_fields),
}


def _mapping_kind(path: tuple) -> str:
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
    return head


# ---------------------------------------------------------------------------------------------
# Reading YAML into plain data plus the position of every key and value.

Loc = tuple[str, int, int]  # file, 1-based line, 1-based column


class PolicyError(Exception):
    """The quota files are invalid; ``errors`` holds one ``file:line:col: message`` per problem."""

    def __init__(self, errors: Sequence[str]):
        self.errors = tuple(errors)
        super().__init__("\n".join(self.errors))


@dataclass
class _Document:
    """One file's data with positions: ``keys[path]`` is where a key is written,
    ``values[path]`` where its value starts."""

    data: Any
    keys: dict[tuple, Loc]
    values: dict[tuple, Loc]
    problems: list[tuple[Loc, str]] = field(default_factory=list)  # found while reading, not fatal


_NULLS = frozenset(("", "~", "null", "Null", "NULL"))
_TRUE = frozenset(("true", "True", "TRUE"))
_FALSE = frozenset(("false", "False", "FALSE"))
_INT_RE = re.compile(r"^[-+]?[0-9]+$")
_FLOAT_RE = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_DUPLICATE = object()  # pending-key marker: the value of a duplicate key is dropped
_MAX_NODES = 1_000_000  # aliases may not blow a small file up (billion laughs)


@functools.lru_cache(maxsize=4096)
def _plain_scalar(text: str) -> Any:
    """YAML 1.2 core schema for unquoted scalars, the same whichever parser read the file."""
    if text in _NULLS:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if _INT_RE.match(text):
        return int(text)
    if text.startswith(("0x", "0o")) and len(text) > 2:
        try:
            return int(text[2:], 16 if text[1] == "x" else 8)
        except ValueError:
            return text
    if _FLOAT_RE.match(text):
        return float(text)
    lowered = text.lower()
    if lowered in (".inf", "+.inf"):
        return math.inf
    if lowered == "-.inf":
        return -math.inf
    if lowered == ".nan":
        return math.nan
    return text


class _YamlProblem(Exception):
    def __init__(self, line: int, col: int, message: str):
        self.line, self.col, self.message = line, col, message


def _events_libyaml(text: str) -> Iterable[Any] | None:
    """libyaml's C parser through PyYAML, when installed: ~20x faster than pure Python."""
    try:
        import yaml
    except ImportError:
        return None
    if not getattr(yaml, "__with_libyaml__", False):
        return None
    try:
        return list(yaml.parse(text, Loader=yaml.CSafeLoader))
    except Exception:
        return None


def _events_ruamel(text: str) -> list[Any]:
    """ruamel.yaml's YAML 1.2 parser: the reference, and the one whose errors admins see."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        return list(YAML(typ="safe", pure=True).parse(text))
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = " ".join(x for x in (e.context, e.problem) if x) or "invalid YAML"
        raise _YamlProblem(
            mark.line + 1 if mark else 1, mark.column + 1 if mark else 1, f"invalid YAML: {what}"
        ) from None
    except YAMLError as e:
        position = getattr(e, "position", None)  # ReaderError: a character YAML forbids
        line, col = 1, 1
        if isinstance(position, int):
            before = text[:position]
            line, col = before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1
        reason = getattr(e, "reason", None)
        character = getattr(e, "character", None)
        if reason and character is not None:
            shown = chr(character) if isinstance(character, int) else character
            what = f"character {shown!r} is not allowed in YAML ({reason})"
        else:
            what = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _YamlProblem(line, col, f"invalid YAML: {what}") from None


class _NeedsDetail(Exception):
    """The fast reader met something to report: read again with positions."""


_SCALAR, _START, _END, _ALIAS, _DOC, _OTHER = range(6)
_EVENT_KINDS: dict[type, int] = {}


def _event_kind(cls: type) -> int:
    name = cls.__name__
    kind = {
        "ScalarEvent": _SCALAR,
        "MappingStartEvent": _START,
        "SequenceStartEvent": _START,
        "MappingEndEvent": _END,
        "SequenceEndEvent": _END,
        "AliasEvent": _ALIAS,
        "DocumentStartEvent": _DOC,
    }.get(name, _OTHER)
    _EVENT_KINDS[cls] = kind
    return kind


def _read_fast(events: Iterable[Any]) -> Any:
    """Plain data from a well-formed quota file, without positions (the common case, kept
    lean for big files); raises _NeedsDetail on anything :func:`_read_yaml` would report."""
    stack: list[list] = []  # [container, is_map, pending_key, anchor, size, merges]
    anchors: dict[str, tuple[Any, int]] = {}
    root: Any = None
    documents = 0
    total = 0
    kinds = _EVENT_KINDS
    for event in events:
        kind = kinds.get(event.__class__)
        if kind is None:
            kind = _event_kind(event.__class__)
        if kind == _SCALAR:
            if event.tag is not None and event.tag not in ("!", "tag:yaml.org,2002:str"):
                raise _NeedsDetail
            if event.style or event.tag is not None or (stack and stack[-1][1] and stack[-1][2] is None):
                value: Any = event.value  # quoted, or a key: keys stay text
            else:
                value = _plain_scalar(event.value)
            if event.anchor:
                anchors[event.anchor] = (value, 1)
            size = 1
        elif kind == _START:
            if event.tag is not None and event.tag not in ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"):
                raise _NeedsDetail
            if stack and stack[-1][1] and stack[-1][2] is None:
                raise _NeedsDetail
            is_map = event.__class__.__name__ == "MappingStartEvent"
            stack.append([{} if is_map else [], is_map, None, event.anchor, 1, None])
            continue
        elif kind == _END:
            frame = stack.pop()
            value, size = frame[0], frame[4]
            if frame[5]:
                for merged in frame[5]:
                    for part in merged if isinstance(merged, list) else [merged]:
                        if not isinstance(part, dict):
                            raise _NeedsDetail
                        for k, v in part.items():
                            if k not in value:
                                value[k] = v
            if frame[3]:
                anchors[frame[3]] = (value, size)
        elif kind == _ALIAS:
            if event.anchor not in anchors:
                raise _NeedsDetail
            value, size = anchors[event.anchor]
        else:
            if kind == _DOC:
                documents += 1
                if documents > 1:
                    raise _NeedsDetail
            continue
        total += size
        if total > _MAX_NODES:
            raise _NeedsDetail
        if not stack:
            root = value
            continue
        frame = stack[-1]
        frame[4] += size
        if frame[1]:
            key = frame[2]
            if key is None:
                if kind != _SCALAR:
                    raise _NeedsDetail
                key = event.value
                if key in frame[0]:
                    raise _NeedsDetail
                frame[2] = key
            else:
                frame[2] = None
                if key == "<<" and kind != _SCALAR:
                    if frame[5] is None:
                        frame[5] = []
                    frame[5].append(value)
                else:
                    frame[0][key] = value
        else:
            frame[0].append(value)
    return root


def _parse_events(text: str) -> list[Any]:
    """The YAML event stream: libyaml when it accepts the text, else ruamel.yaml (which also
    accepts what libyaml is stricter about, e.g. ``image: a/b:tag`` inside ``{...}``)."""
    events = _events_libyaml(text)
    return events if events is not None else _events_ruamel(text)


def _read_yaml(text: str, filename: str, events: list[Any] | None = None) -> _Document:
    """Parse one YAML document into plain dicts/lists/scalars, recording positions.

    Works on the parser's event stream (no node graph): fast, and the same code for libyaml
    and ruamel.yaml. Keys are always strings; duplicate keys, tags, more than one document and
    runaway aliases are refused with their position.
    """
    if events is None:
        events = _parse_events(text)
    keys: dict[tuple, Loc] = {}
    values: dict[tuple, Loc] = {}
    anchors: dict[str, tuple[Any, int]] = {}
    problems: list[tuple[Loc, str]] = []
    # Stack frames: [container, path, pending_key, anchor, size, merges, explicit_keys, is_map,
    #                start_event, keys_seen]
    stack: list[list] = []
    root: Any = None
    documents = 0
    total_nodes = 0

    def where(event: Any) -> tuple[int, int]:
        mark = event.start_mark
        return mark.line + 1, mark.column + 1

    def add(value: Any, size: int, event: Any) -> None:
        nonlocal root, total_nodes
        total_nodes += size
        if total_nodes > _MAX_NODES:
            line, col = where(event)
            raise _YamlProblem(line, col, "the file expands to too many values (aliases nest too deeply)")
        if not stack:
            root = value
            values[()] = (filename, *where(event))
            return
        frame = stack[-1]
        container, path = frame[0], frame[1]
        frame[4] += size
        if frame[7]:  # mapping
            if frame[2] is None:  # this is a key
                line, col = where(event)
                if isinstance(value, (dict, list)):
                    raise _YamlProblem(line, col, "mapping keys must be plain names, not lists or mappings")
                key = event.value if type(event).__name__ == "ScalarEvent" else str(value)
                if key in frame[6] or key in frame[9]:
                    first = keys.get((*path, key))
                    at = f" (first at line {first[1]})" if first else ""
                    what = ".".join(str(p) for p in (*path, key))
                    problems.append(
                        ((filename, line, col), f"duplicate key {what}{at}; each key may appear once in a mapping")
                    )
                    frame[2] = _DUPLICATE
                    return
                frame[2] = key
                frame[9].add(key)
                keys[(*path, key)] = (filename, line, col)
                return
            key = frame[2]
            frame[2] = None
            if key is _DUPLICATE:
                return
            if key == "<<" and type(event).__name__ != "ScalarEvent":
                frame[5].append((value, where(event)))
                return
            frame[6].add(key)
            container[key] = value
            values[(*path, key)] = (filename, *where(event))
        else:
            values[(*path, len(container))] = (filename, *where(event))
            container.append(value)

    for event in events:
        kind = type(event).__name__
        if kind == "ScalarEvent":
            tag = event.tag
            if tag is not None and tag not in ("!", "tag:yaml.org,2002:str"):
                line, col = where(event)
                raise _YamlProblem(line, col, f"YAML tags such as {tag!r} are not allowed in quota files")
            style = event.style
            if tag is not None or (style not in (None, "", "plain") and style):
                value: Any = event.value
            else:
                value = _plain_scalar(event.value)
            if event.anchor:
                anchors[event.anchor] = (value, 1)
            add(value, 1, event)
        elif kind in ("MappingStartEvent", "SequenceStartEvent"):
            if event.tag is not None and event.tag not in ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"):
                line, col = where(event)
                raise _YamlProblem(line, col, f"YAML tags such as {event.tag!r} are not allowed in quota files")
            is_map = kind == "MappingStartEvent"
            if stack and stack[-1][7] and stack[-1][2] is None:
                line, col = where(event)
                raise _YamlProblem(line, col, "mapping keys must be plain names, not lists or mappings")
            if stack:
                frame = stack[-1]
                child_path = frame[1] + (frame[2],) if frame[7] else frame[1] + (len(frame[0]),)
            else:
                child_path = ()
            stack.append([{} if is_map else [], child_path, None, event.anchor, 1, [], set(), is_map, event, set()])
        elif kind in ("MappingEndEvent", "SequenceEndEvent"):
            frame = stack.pop()
            container, start = frame[0], frame[8]
            for merged, (line, col) in frame[5]:
                for part in merged if isinstance(merged, list) else [merged]:
                    if not isinstance(part, dict):
                        raise _YamlProblem(line, col, "'<<' merges only mappings (or a list of mappings)")
                    for k, v in part.items():
                        if k not in frame[6]:
                            frame[6].add(k)
                            container[k] = v
            if frame[3]:
                anchors[frame[3]] = (container, frame[4])
            add(container, frame[4], start)
        elif kind == "AliasEvent":
            if event.anchor not in anchors:
                line, col = where(event)
                raise _YamlProblem(line, col, f"alias *{event.anchor} refers to no finished anchor &{event.anchor}")
            value, size = anchors[event.anchor]
            add(value, size, event)
        elif kind == "DocumentStartEvent":
            documents += 1
            if documents > 1:
                line, col = where(event)
                raise _YamlProblem(line, col, "a quota file holds one YAML document; split it into several files")
    return _Document(root, keys, values, problems)


# ---------------------------------------------------------------------------------------------
# Several files -> one policy, with conflicts reported.

# Sections whose entries are whole units: a name defined in two files must be identical.
_ENTRY_SECTIONS = ("images", "groups", "users")


def _merge_documents(documents: Sequence[_Document], errors: list[tuple[Loc, str]]) -> _Document:
    data: dict[str, Any] = {}
    merged = _Document(data, {}, {})
    for doc in documents:
        if not isinstance(doc.data, dict):
            continue
        merged.keys.update({p: v for p, v in doc.keys.items() if p not in merged.keys})
        merged.values.update({p: v for p, v in doc.values.items() if p not in merged.values})
        for section, content in doc.data.items():
            if section not in data or not isinstance(content, dict) or not isinstance(data[section], dict):
                if section in data and data[section] != content:
                    errors.append(_conflict(doc, merged, (section,)))
                    continue
                data[section] = content if not isinstance(content, dict) else dict(content)
                continue
            target = data[section]
            for name, entry in content.items():
                path = (section, name)
                if name not in target:
                    target[name] = entry
                    _take_positions(doc, merged, path)
                elif target[name] == entry:
                    continue
                elif section in _ENTRY_SECTIONS or (section == "gpus" and name == "models"):
                    if section == "gpus" and isinstance(entry, dict) and isinstance(target[name], dict):
                        _merge_leaf_dict(doc, merged, path, target[name], entry, errors, atomic=True)
                    else:
                        errors.append(_conflict(doc, merged, path))
                elif (
                    section == "gpus"
                    and name == "exclude"
                    and isinstance(entry, list)
                    and isinstance(target[name], list)
                ):
                    target[name] = target[name] + [x for x in entry if x not in target[name]]
                elif isinstance(entry, dict) and isinstance(target[name], dict):
                    _merge_leaf_dict(doc, merged, path, target[name], entry, errors, atomic=False)
                else:
                    errors.append(_conflict(doc, merged, path))
    return merged


def _merge_leaf_dict(doc, merged, path, target: dict, entry: dict, errors, *, atomic: bool) -> None:
    target = dict(target)
    for key, value in entry.items():
        sub = (*path, key)
        if key not in target:
            target[key] = value
            _take_positions(doc, merged, sub)
        elif target[key] != value or atomic:
            if target[key] != value:
                errors.append(_conflict(doc, merged, sub))
    _set_path(merged.data, path, target)


def _set_path(data: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def _take_positions(doc: _Document, merged: _Document, path: tuple) -> None:
    n = len(path)
    for table, target in ((doc.keys, merged.keys), (doc.values, merged.values)):
        for p, loc in table.items():
            if p[:n] == path:
                target[p] = loc


def _conflict(doc: _Document, merged: _Document, path: tuple) -> tuple[Loc, str]:
    here = doc.keys.get(path) or doc.values.get(path) or ("?", 1, 1)
    first = merged.keys.get(path) or merged.values.get(path)
    there = f"{first[0]}:{first[1]}" if first else "another file"
    what = ".".join(str(p) for p in path)
    return here, (
        f"{what} is also defined at {there} with a different value; "
        "define each user, group, image and setting once (or identically)"
    )


# ---------------------------------------------------------------------------------------------
# The validated policy and resolution.

# Fields of LimitsEntry, and how two groups' values combine into "the most generous".
_MAX_FIELDS = ("gpus", "gpus_total", "cpus", "shm", "pids", "named_servers", "share", "idle_timeout", "max_runtime")

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
    pools: Mapping[str, int] = field(default_factory=dict)  # group -> GPUs the whole group may hold
    shared_volumes: Mapping[str, str] = field(default_factory=dict)  # group -> Docker volume name
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
    _group_cache: dict[tuple[str, ...], tuple[dict, dict, dict]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _image_cache: dict[Any, tuple] = field(default_factory=dict, compare=False, repr=False)

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
        if name not in _ENTRY_KEYS:
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
    those of ``hub_groups`` (the user's JupyterHub groups) that the policy defines; sorted.

    The one answer to "which groups is this user in" for the spawner, the GPU queue, the
    reclaimer and ``labgpu usage``: a hub group the policy does not know gives no limits."""
    known = policy.spec.groups
    listed = policy.member_groups.get(user, ())
    return tuple(sorted({g for g in hub_groups if g in known}.union(listed)))


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
            volumes[g] = f"labgpu-group-{g}"
        elif isinstance(shared, str):
            volumes[g] = shared
    return {
        "groups": in_groups,
        "pools": {g: spec.groups[g].pool for g in in_groups if spec.groups[g].pool is not None},
        "shared_volumes": volumes,
    }


def _group_values(policy: Policy, in_groups: tuple[str, ...]) -> tuple[dict, dict]:
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


def _limits(policy: Policy, user: str, values: dict, sources: dict, extras: dict) -> Limits:
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
        pools=extras["pools"],
        shared_volumes=extras["shared_volumes"],
        known_models=policy.known_models,
        sources=sources,
    )


# ---------------------------------------------------------------------------------------------
# Validation: pydantic errors and cross-references as file:line:col lines.


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _pydantic_message(error: Mapping[str, Any], path: tuple) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    field_name = ".".join(str(p) for p in path) or "the file"
    got = error.get("input")
    if kind == "extra_forbidden":
        allowed = ", ".join(_ALLOWED_KEYS.get(_mapping_kind(path[:-1]), ()))
        return (
            f"unknown key {str(path[-1])!r} in {'.'.join(map(str, path[:-1])) or 'the top level'} (allowed: {allowed})"
        )
    if kind == "missing":
        return f"{field_name} is required"
    simple = {
        "int_type": "a whole number",
        "int_from_float": "a whole number",
        "int_parsing": "a whole number",
        "float_type": "a number",
        "float_parsing": "a number",
        "bool_type": "true or false",
        "bool_parsing": "true or false",
        "string_type": "a text string",
        "list_type": "a list, e.g. [a, b]",
        "dict_type": "a mapping of name: value",
        "model_type": "a mapping of name: value",
        "model_attributes_type": "a mapping of name: value",
    }
    if kind in simple:
        return f"{field_name} must be {simple[kind]} (got {_describe(got)})"
    bounds = {
        "greater_than_equal": (">=", "ge"),
        "less_than_equal": ("<=", "le"),
        "greater_than": (">", "gt"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        bound = ctx.get(key)
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"{field_name} must be {op} {bound} (got {_describe(got)})"
    if kind == "string_pattern_mismatch":
        hints = {
            "exclude": "GPU UUIDs as `nvidia-smi -L` prints them, e.g. GPU-5e8d0c0a-...",
            "shared_volume": "true, false, or a Docker volume name (letters, digits, _ . -)",
            "image": "a Docker image reference without spaces, e.g. labgpu/workspace:local",
        }
        hint = next((h for k, h in hints.items() if k in path), "no spaces or special characters")
        return f"{field_name} is not valid (got {_describe(got)}; expected {hint})"
    if kind in ("string_too_short", "too_short"):
        return f"{field_name} must not be empty"
    if kind in ("string_too_long", "too_long"):
        return f"{field_name} is too long (at most {ctx.get('max_length')} characters)"
    message = str(error.get("msg", "invalid value"))
    if kind in ("size", "size_range", "duration", "duration_range", "shared_volume"):
        return f"{field_name} {message}"
    return f"{field_name}: {message}"


def _strip_union_tags(loc: tuple) -> tuple:
    """Pydantic adds branch names (``bool``, ``str``, ``function-before[...]``) to union locations."""
    return tuple(
        p
        for p in loc
        if not (
            isinstance(p, str) and (p in ("bool", "str", "int", "float", "list[str]", "constrained-str") or "[" in p)
        )
    )


def _locate(doc: _Document, path: tuple, *, key: bool) -> Loc:
    table = doc.keys if key else doc.values
    probe = path
    while probe:
        loc = table.get(probe) or (doc.values.get(probe) if key else doc.keys.get(probe))
        if loc:
            return loc
        probe = probe[:-1]
    return doc.values.get((), ("?", 1, 1))


def _cross_checks(spec: PolicyFile, errors: list[tuple[tuple, bool, str]]) -> None:
    """What pydantic cannot see: names that must exist, and values that contradict each other."""
    image_names = list(spec.images)
    model_names = list(spec.gpus.models)
    entries: list[tuple[tuple, LimitsEntry]] = [(("defaults",), spec.defaults)]
    entries += [(("groups", n), g) for n, g in spec.groups.items()]
    entries += [(("users", n), u) for n, u in spec.users.items()]
    for name in spec.images:
        if not _IMAGE_NAME_RE.match(name):
            errors.append(
                (
                    ("images", name),
                    True,
                    f"image name {name!r} must be lowercase letters, digits, . _ - (it appears in spawn forms and API requests)",
                )
            )
    for name in list(spec.users) + list(spec.groups):
        if not _NAME_RE.match(name):
            errors.append(
                (
                    (("users" if name in spec.users else "groups"), name),
                    True,
                    f"{name!r} is not a valid user or group name (letters, digits, . _ @ + -, starting with a letter or digit)",
                )
            )
    for name in model_names:
        if not _NAME_RE.match(name):
            errors.append(
                (("gpus", "models", name), True, f"GPU model name {name!r} must be letters, digits, . _ - (e.g. A100)")
            )
    for path, entry in entries:
        for i, image in enumerate(entry.images or []):
            if image not in spec.images:
                known = ", ".join(image_names) or "none: add an images: section"
                errors.append(
                    (
                        (*path, "images", i),
                        False,
                        f"unknown image {image!r} in {'.'.join(path)}.images (defined images: {known})",
                    )
                )
        for i, model in enumerate(entry.models or []):
            if model not in spec.gpus.models:
                known = ", ".join(model_names) or "none: define them under gpus.models"
                errors.append(
                    (
                        (*path, "models", i),
                        False,
                        f"unknown GPU model {model!r} in {'.'.join(path)}.models (defined models: {known}, or 'any')",
                    )
                )
        if entry.gpus is not None and entry.gpus_total is not None and entry.gpus_total < entry.gpus:
            errors.append(
                (
                    (*path, "gpus_total"),
                    False,
                    f"{'.'.join(path)}.gpus_total ({entry.gpus_total}) is below gpus per server ({entry.gpus}); make it >= {entry.gpus}",
                )
            )
        memory = entry.memory
        if memory is not None and memory.guarantee is not None and memory.guarantee > memory.limit:
            errors.append(
                (
                    (*path, "memory", "guarantee"),
                    False,
                    f"{'.'.join(path)}.memory.guarantee ({format_size(memory.guarantee)}) is above the limit ({format_size(memory.limit)})",
                )
            )
        if memory is not None and entry.shm is not None and entry.shm > memory.limit:
            errors.append(
                (
                    (*path, "shm"),
                    False,
                    f"{'.'.join(path)}.shm ({format_size(entry.shm)}) is above the memory limit ({format_size(memory.limit)}); /dev/shm counts against memory",
                )
            )
    for name, group in spec.groups.items():
        seen: set[str] = set()
        for i, member in enumerate(group.members):
            if member in seen:
                errors.append((("groups", name, "members", i), False, f"groups.{name}.members lists {member!r} twice"))
            seen.add(member)
            if not _NAME_RE.match(member):
                errors.append(
                    (
                        ("groups", name, "members", i),
                        False,
                        f"groups.{name}.members: {member!r} is not a valid user name",
                    )
                )
        if group.pool is not None and group.gpus is not None and group.pool < group.gpus and group.pool > 0:
            errors.append(
                (
                    ("groups", name, "pool"),
                    False,
                    f"groups.{name}.pool ({group.pool}) is below gpus per server ({group.gpus}); no member could ever start such a server",
                )
            )


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


def _valid_parts(data: Any) -> PolicyFile:
    """The entries that are valid on their own, so that cross-checks (unknown images, ...)
    are reported together with type errors elsewhere in the file."""
    if not isinstance(data, dict):
        return PolicyFile()
    parts: dict[str, Any] = {}
    sections = {"images": ImageSpec, "groups": GroupEntry, "users": LimitsEntry}
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


def _build_policy(spec: PolicyFile, files: Sequence[str], doc: _Document) -> Policy:
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


def _format(loc: Loc, message: str) -> str:
    return f"{loc[0]}:{loc[1]}:{loc[2]}: {' '.join(message.split())}"


def _load_fast(texts: Sequence[tuple[str, str]], parsed: dict[str, list[Any]]) -> Policy | None:
    """The policy when every file is valid, read without positions; None when anything is
    wrong (then :func:`load_policy_texts` reads again with positions to explain it)."""
    documents: list[_Document] = []
    for filename, text in texts:
        try:
            events = parsed[filename] = _parse_events(text)
            data = _read_fast(events)
        except (_YamlProblem, _NeedsDetail):
            return None
        if data is None:
            continue
        if not isinstance(data, dict):
            return None
        documents.append(_Document(data, {}, {}))
    conflicts: list[tuple[Loc, str]] = []
    merged = _merge_documents(documents, conflicts)
    if conflicts:
        return None
    try:
        spec = PolicyFile.model_validate(merged.data)
    except ValidationError:
        return None
    cross: list[tuple[tuple, bool, str]] = []
    _cross_checks(spec, cross)
    if cross:
        return None
    return _build_policy(spec, [name for name, _ in texts], merged)


def load_policy_texts(texts: Sequence[tuple[str, str]]) -> Policy:
    """Validate ``[(filename, yaml_text), ...]`` merged into one policy; raise PolicyError
    with every problem, sorted by file and line."""
    parsed: dict[str, list[Any]] = {}
    policy = _load_fast(texts, parsed)
    if policy is not None:
        return policy
    located: list[tuple[Loc, str]] = []
    documents: list[_Document] = []
    for filename, text in texts:
        try:
            doc = _read_yaml(text, filename, parsed.get(filename))
        except _YamlProblem as e:
            located.append(((filename, e.line, e.col), e.message))
            continue
        located += doc.problems
        if doc.data is None:
            continue  # an empty file (or only comments) sets nothing
        if not isinstance(doc.data, dict):
            located.append(
                (
                    doc.values.get((), (filename, 1, 1)),
                    f"a quota file must be a mapping with sections {', '.join(_ALLOWED_KEYS['top'])} (got {type(doc.data).__name__})",
                )
            )
            continue
        documents.append(doc)
    merged = _merge_documents(documents, located)
    try:
        spec = PolicyFile.model_validate(merged.data)
    except ValidationError as e:
        for error in e.errors(include_url=False):
            raw = tuple(error["loc"])
            path = _strip_union_tags(raw)
            if error["type"] == "extra_forbidden" and raw and (not path or path[-1] != raw[-1]):
                path = path + (raw[-1],)  # the unknown key itself may look like a union tag ("a[b")
            if path[-2:-1] == ("memory",) and path[-1] == "limit" and path not in merged.keys:
                path = path[:-1]  # written as the shorthand memory: 16G
            key = error["type"] == "extra_forbidden"
            located.append(
                (
                    _locate(merged, path, key=key),
                    _pydantic_message(error, path),
                )
            )
        spec = None
    checked = spec if spec is not None else _valid_parts(merged.data)
    cross: list[tuple[tuple, bool, str]] = []
    _cross_checks(checked, cross)
    located += [(_locate(merged, path, key=key), message) for path, key, message in cross]
    if located:
        unique = sorted(set(located), key=lambda item: (item[0][0], item[0][1], item[0][2], item[1]))
        raise PolicyError([_format(loc, message) for loc, message in unique])
    assert spec is not None
    return _build_policy(spec, [name for name, _ in texts], merged)


def load_policy_text(text: str, filename: str = "quotas.yaml") -> Policy:
    """Validate one file's text; raise PolicyError listing every problem."""
    return load_policy_texts([(filename, text)])


def quota_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files named by ``paths``: files as given, directories as their ``*.yaml``/``*.yml``, sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        else:
            found.append(path)
    return found


def split_paths(value: str) -> list[str]:
    """``LABGPU_QUOTAS``: files or directories separated by commas or colons."""
    return [part.strip() for part in re.split(r"[,:]", value) if part.strip()]


def _display_path(path: Path) -> str:
    """The path as admins know it: relative to the working directory when inside it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


def load_policy(paths: Iterable[str | os.PathLike[str]]) -> Policy:
    """Read and validate quota files (or directories of them); raise PolicyError on any problem."""
    raw_paths = list(paths)
    files = quota_files(raw_paths)
    texts: list[tuple[str, str]] = []
    errors: list[str] = []
    if not files:
        shown = ", ".join(str(p) for p in raw_paths) or "(none given)"
        raise PolicyError([f"{shown}: no quota files found (expected *.yaml files)"])
    for path in files:
        shown = _display_path(path)
        try:
            texts.append((shown, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError as e:
            errors.append(f"{shown}:1:1: not UTF-8 text ({e.reason} at byte {e.start})")
        except OSError as e:
            errors.append(f"{shown}: cannot be read: {e.strerror or e}")
    try:
        policy = load_policy_texts(texts)
    except PolicyError as e:
        errors += e.errors
    if errors:
        raise PolicyError(errors)
    return policy


# ---------------------------------------------------------------------------------------------
# Hot reload: keep the last good policy in force.


@dataclass(frozen=True)
class ReloadResult:
    """What :meth:`PolicyStore.refresh` saw: whether the files changed, whether the new
    version is now in force, and the error lines of a bad edit (empty if it was good)."""

    changed: bool
    applied: bool
    errors: tuple[str, ...] = ()


class PolicyStore:
    """The policy in force: reloaded when the quota files change, the last good one kept when
    an edit is bad. Cheap to call before every spawn (a few ``stat`` calls)."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]]):
        self.paths = [str(p) for p in paths]
        self._policy: Policy | None = None
        self._signature: tuple | None = None
        self.errors: tuple[str, ...] = ()

    def _current_signature(self) -> tuple:
        stamps = []
        for path in quota_files(self.paths):
            try:
                st = path.stat()
                stamps.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamps.append((str(path), None, None, None))
        for raw in self.paths:  # a file added to or removed from a directory changes the set
            try:
                stamps.append((raw, Path(raw).stat().st_mtime_ns))
            except OSError:
                stamps.append((raw, None))
        return tuple(stamps)

    def load(self) -> Policy:
        """First load, at hub start: raises PolicyError (every problem listed) so the hub
        refuses to start with a bad file."""
        signature = self._current_signature()
        self._policy = load_policy(self.paths)
        self._signature = signature
        self.errors = ()
        return self._policy

    @property
    def policy(self) -> Policy:
        """The policy in force (the last good one)."""
        if self._policy is None:
            return self.load()
        return self._policy

    def refresh(self) -> ReloadResult:
        """Reload if any file changed since the last look; a bad edit leaves the last good
        policy in force and its errors in ``result.errors`` (reported once per edit)."""
        signature = self._current_signature()
        if signature == self._signature:
            return ReloadResult(changed=False, applied=False)
        self._signature = signature
        try:
            self._policy = load_policy(self.paths)
        except PolicyError as e:
            self.errors = e.errors
            return ReloadResult(changed=True, applied=False, errors=e.errors)
        self.errors = ()
        return ReloadResult(changed=True, applied=True)

    def limits(self, user: str, groups: Iterable[str] = ()) -> Limits:
        """Refresh, then resolve ``user``'s limits under the policy in force."""
        self.refresh()
        return resolve(self.policy, user, groups)


def jupyterhub_groups(policy: Policy) -> dict[str, dict[str, list[str]]]:
    """The policy's groups with their listed members, in the form of JupyterHub's
    ``c.JupyterHub.load_groups`` (``{group: {"users": [...]}}``), to sync them into the hub."""
    return {name: {"users": list(group.members)} for name, group in policy.spec.groups.items()}


DEFAULT_QUOTAS_PATH = Path(__file__).resolve().parents[2] / "quotas" / "quotas.yaml"


def default_paths(environ: Mapping[str, str] = os.environ) -> list[str]:
    """``LABGPU_QUOTAS`` if set, else quotas/quotas.yaml of this repository."""
    value = environ.get("LABGPU_QUOTAS", "")
    return split_paths(value) if value.strip() else [str(DEFAULT_QUOTAS_PATH)]
