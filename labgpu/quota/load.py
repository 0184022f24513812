"""Quota files -> one validated :class:`~labgpu.quota.limits.Policy`, or every problem as
``file:line:col: message``.

The common case, every file valid, takes the fast path: libyaml reads, pydantic validates, no
positions. Anything wrong sends all files down the slow path, which reads them again keeping
positions (:mod:`labgpu.quota.reader`) and lists every problem with its place: pydantic's errors
in the admins' words, then the rules across fields (:func:`~labgpu.quota.schema.cross_checks`).
Several files merge into one policy; a user, group, image or setting defined twice must be
defined the same.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from labgpu.quota.errors import KeyPath, Loc, PolicyError, error_line
from labgpu.quota.limits import Policy, build_policy
from labgpu.quota.names import name_problems, with_normalized_names
from labgpu.quota.reader import Document, NeedsDetail, YamlProblem, YamlText, file_too_big
from labgpu.quota.schema import ALLOWED_KEYS, PolicyFile, Problem, cross_checks, mapping_kind, valid_parts

MAX_ERRORS = 100  # lines of a report; the rest is counted (5,000 unknown keys are one mistake)
MAX_LINE = 500  # characters of one line: a key or value of a megabyte is shown cut short

# ---------------------------------------------------------------------------------------------
# Several files -> one policy, with conflicts reported.

# Sections whose entries are whole units: a name defined in two files must be identical.
_ENTRY_SECTIONS = ("images", "groups", "users")


def _merge_documents(documents: Sequence[Document], errors: list[tuple[Loc, str]]) -> Document:
    """Several files' data (and positions) as one; a name defined differently twice goes to ``errors``."""
    data: dict[str, Any] = {}
    merged = Document(data, {}, {})
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
                        _merge_leaf_dict(doc, merged, path, target[name], entry, errors)
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
                    _merge_leaf_dict(doc, merged, path, target[name], entry, errors)
                else:
                    errors.append(_conflict(doc, merged, path))
    return merged


def _merge_leaf_dict(
    doc: Document,
    merged: Document,
    path: KeyPath,
    target: dict[str, Any],
    entry: dict[str, Any],
    errors: list[tuple[Loc, str]],
) -> None:
    target = dict(target)
    for key, value in entry.items():
        sub = (*path, key)
        if key not in target:
            target[key] = value
            _take_positions(doc, merged, sub)
        elif target[key] != value:
            errors.append(_conflict(doc, merged, sub))
    _set_path(merged.data, path, target)


def _set_path(data: dict[str, Any], path: KeyPath, value: Any) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def _take_positions(doc: Document, merged: Document, path: KeyPath) -> None:
    n = len(path)
    for table, target in ((doc.keys, merged.keys), (doc.values, merged.values)):
        for p, loc in table.items():
            if p[:n] == path:
                target[p] = loc


def _conflict(doc: Document, merged: Document, path: KeyPath) -> tuple[Loc, str]:
    here = doc.keys.get(path) or doc.values.get(path) or ("?", 1, 1)
    first = merged.keys.get(path) or merged.values.get(path)
    there = f"{first[0]}:{first[1]}" if first else "another file"
    what = ".".join(str(p) for p in path)
    return here, (
        f"{what} is also defined at {there} with a different value; "
        "define each user, group, image and setting once (or identically)"
    )


# ---------------------------------------------------------------------------------------------
# Validation: pydantic errors and cross-references as file:line:col lines.


def _describe(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) or len(value) <= 60 else repr(value[:60])
    return text if len(text) <= 60 else text[:57] + "..."


def _path_text(path: KeyPath) -> str:
    """``users.bob.gpus``, each part cut short (a key may be a megabyte long)."""
    return ".".join(p if len(p := str(part)) <= 60 else p[:57] + "..." for part in path)


def _pydantic_message(error: Mapping[str, Any], path: KeyPath) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    field_name = _path_text(path) or "the file"
    got = error.get("input")
    if kind == "extra_forbidden":
        allowed = ", ".join(ALLOWED_KEYS.get(mapping_kind(path[:-1]), ()))
        return (
            f"unknown key {_describe(str(path[-1]))} in {_path_text(path[:-1]) or 'the top level'} (allowed: {allowed})"
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


def _strip_union_tags(loc: KeyPath) -> KeyPath:
    """Pydantic adds branch names (``bool``, ``str``, ``function-before[...]``) to union locations."""
    return tuple(
        p
        for p in loc
        if not (
            isinstance(p, str) and (p in ("bool", "str", "int", "float", "list[str]", "constrained-str") or "[" in p)
        )
    )


def _locate(doc: Document, path: KeyPath, *, key: bool) -> Loc:
    table = doc.keys if key else doc.values
    probe = path
    while probe:
        loc = table.get(probe) or (doc.values.get(probe) if key else doc.keys.get(probe))
        if loc:
            return loc
        probe = probe[:-1]
    return doc.values.get((), ("?", 1, 1))


def _load_fast(files: Sequence[tuple[str, YamlText]]) -> Policy | None:
    """The policy when every file is valid, read without positions; None when anything is
    wrong (then :func:`load_policy_texts` reads again with positions to explain it)."""
    documents: list[Document] = []
    for _, text in files:
        try:
            data = text.data()
        except NeedsDetail:
            return None
        if data is None:
            continue
        if not isinstance(data, dict):
            return None
        documents.append(Document(data))
    conflicts: list[tuple[Loc, str]] = []
    merged = _merge_documents(documents, conflicts)
    if conflicts:
        return None
    try:
        spec = PolicyFile.model_validate(merged.data)
    except ValidationError:
        return None
    problems: list[Problem] = []
    cross_checks(spec, problems)
    if problems or name_problems(spec):
        return None
    return build_policy(with_normalized_names(spec), [name for name, _ in files])


def _read_located(files: Sequence[tuple[str, YamlText]], located: list[tuple[Loc, str]]) -> list[Document]:
    """Every file read with positions; what cannot be read goes to ``located``."""
    documents: list[Document] = []
    for filename, text in files:
        try:
            doc = text.located(filename)
        except YamlProblem as e:
            located.append(((filename, e.line, e.col), e.message))
            continue
        located += doc.problems
        if doc.data is None:
            continue  # an empty file (or only comments) sets nothing
        if not isinstance(doc.data, dict):
            sections = ", ".join(ALLOWED_KEYS["top"])
            message = f"a quota file must be a mapping with sections {sections} (got {type(doc.data).__name__})"
            located.append((doc.values.get((), (filename, 1, 1)), message))
            continue
        documents.append(doc)
    return documents


def _validate(merged: Document, located: list[tuple[Loc, str]]) -> PolicyFile | None:
    """The merged data validated, or None with each of pydantic's errors in ``located``."""
    try:
        return PolicyFile.model_validate(merged.data)
    except ValidationError as e:
        for error in e.errors(include_url=False):
            raw = tuple(error["loc"])
            path = _strip_union_tags(raw)
            if error["type"] == "extra_forbidden" and raw and (not path or path[-1] != raw[-1]):
                path = (*path, raw[-1])  # the unknown key itself may look like a union tag ("a[b")
            if path[-2:-1] == ("memory",) and path[-1] == "limit" and path not in merged.keys:
                path = path[:-1]  # written as the shorthand memory: 16G
            key = error["type"] == "extra_forbidden"
            located.append((_locate(merged, path, key=key), _pydantic_message(error, path)))
        return None


def load_policy_texts(texts: Sequence[tuple[str, str]]) -> Policy:
    """Validate ``[(filename, yaml_text), ...]`` merged into one policy; raise PolicyError
    with every problem (the first MAX_ERRORS), sorted by file and line. Whatever goes wrong is
    a PolicyError: the hub refuses to start, or keeps the last good policy, and says why."""
    try:
        with _collector_paused():
            return _load_policy_texts(texts)
    except PolicyError:
        raise
    except Exception as e:  # a bug: still the admin's message, not a traceback in the hub's loop
        where = texts[0][0] if texts else "the quota files"
        what = " ".join(str(e).split())[:200]
        raise PolicyError(
            [f"{where}:1:1: could not be read ({type(e).__name__}: {what}); please report this as a bug of LabGPU Hub"]
        ) from e


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a file is read: composing builds ~100,000
    node objects for 1,000 users, and the collections they trigger, scanning everything alive,
    cost a third of the load and most of its variance (issue 21: 28 -> 21 ms median for the
    compose alone). Reference counting still frees what is dropped; the collector runs again
    after. A file's size is bounded (:func:`labgpu.quota.reader.file_too_big`)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load_policy_texts(texts: Sequence[tuple[str, str]]) -> Policy:
    files = [(filename, YamlText(text)) for filename, text in texts]
    policy = _load_fast(files)
    if policy is not None:
        return policy
    located: list[tuple[Loc, str]] = []
    merged = _merge_documents(_read_located(files, located), located)
    spec = _validate(merged, located)
    problems: list[Problem] = []
    checked = spec if spec is not None else valid_parts(merged.data)
    cross_checks(checked, problems)
    problems += name_problems(checked)
    located += [(_locate(merged, path, key=key), message) for path, key, message in problems]
    if located or spec is None:
        unique = sorted(set(located), key=lambda item: (item[0][0], item[0][1], item[0][2], item[1]))
        lines = [_short(error_line(loc, message)) for loc, message in unique[:MAX_ERRORS]]
        if len(unique) > MAX_ERRORS:
            lines.append(f"... and {len(unique) - MAX_ERRORS} more problems: fix the ones above first")
        raise PolicyError(lines)
    return build_policy(with_normalized_names(spec), [name for name, _ in texts])


def _short(line: str) -> str:
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."


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
            too_big = file_too_big(path.stat().st_size)
            if too_big:  # not even read into memory
                errors.append(f"{shown}:1:1: {too_big}")
                continue
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
