"""Reading a quota file's YAML into plain data, and, when the file is wrong, where each key and value is.

The normal path lets libyaml's C composer (``yaml.CSafeLoader``) build the node graph and keeps no
positions: fast for a big lab's file. When something must be explained, the file is composed
again keeping the line and column of every node: by libyaml when it can place everything, else by
ruamel.yaml, which also reads what libyaml refuses but YAML 1.2 allows, says where an alias
(``*name``) is written and tells the tag ``!`` from none. (ruamel.yaml's pure-Python composer takes
~0.5 s on a 5,000-line file, libyaml's ~20 ms; so ruamel.yaml is the exception, not the rule.)

Both node graphs are turned into data by the same :class:`_Builder`, so a file means the same
whichever library read it: the YAML 1.2 core schema for unquoted scalars (``yes`` is text,
``0x10`` is 16), keys are always text, ``<<`` merges mappings, and duplicate keys, tags, a second
document, deep nesting and alias bombs ("billion laughs") are refused.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, NoReturn

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.composer import Composer
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import MappingNode, ScalarNode
from ruamel.yaml.resolver import VersionedResolver
from ruamel.yaml.scanner import Scanner
from ruamel.yaml.tag import Tag

from labgpu.quota.errors import KeyPath, Loc
from labgpu.units import format_size

MAX_VALUES = 1_000_000  # keys and values a file may stand for, aliases expanded (billion laughs)
MAX_DEPTH = 100  # a quota file nests 4 levels deep; far deeper is a mistake or an attack
MAX_FILE_CHARS = 4 * 1024**2  # a lab of 1,000 users and 100 groups writes ~90 KB
MAX_NUMBER_CHARS = 100  # longer, a number cannot be a count, a size or a duration (5,000 digits cannot even be printed)

_PLAIN = "tag:labgpu.org,2026:plain"  # an unquoted scalar without a tag: typed by _plain_scalar
_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
# Where a YAML tag could start ("!!python/object", "! text"): such files are read on the slow path,
# the only one that tells the non-specific tag "!" apart from no tag.
_MAY_HAVE_TAGS = re.compile(r"(?:^|[\s\[{,])!")
_MAY_HAVE_ALIASES = re.compile(r"(?:^|[\s\[{,])\*")  # libyaml's nodes do not say where an alias is


class YamlProblem(Exception):
    """The file cannot be read as a quota file at all (at ``line``:``col``)."""

    def __init__(self, line: int, col: int, message: str):
        super().__init__(message)
        self.line, self.col, self.message = line, col, message


class NeedsDetail(Exception):
    """The fast path met something to report or to look at closer: read again with positions."""


class _NumberTooLong(NeedsDetail):
    """An unquoted number of more than MAX_NUMBER_CHARS characters."""


def file_too_big(size: int) -> str | None:
    """Why a file of ``size`` bytes (or characters) is not read as a quota file, or None."""
    if size <= MAX_FILE_CHARS:
        return None
    return (
        f"the file is {format_size(size)}; a quota file may be at most {format_size(MAX_FILE_CHARS)} "
        "(split it into files in a directory)"
    )


@dataclass
class Document:
    """One file's data with positions: ``keys[path]`` is where a key is written,
    ``values[path]`` where its value starts; ``problems`` were found while reading, not fatal."""

    data: Any
    keys: dict[KeyPath, Loc] = field(default_factory=dict)
    values: dict[KeyPath, Loc] = field(default_factory=dict)
    problems: list[tuple[Loc, str]] = field(default_factory=list)


_NULLS = frozenset(("", "~", "null", "Null", "NULL"))
_TRUE = frozenset(("true", "True", "TRUE"))
_FALSE = frozenset(("false", "False", "FALSE"))
_INT_RE = re.compile(r"^[-+]?[0-9]+$")
_FLOAT_RE = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


@functools.lru_cache(maxsize=4096)
def _plain_scalar(text: str) -> Any:
    """YAML 1.2 core schema for unquoted scalars, the same whichever library read the file."""
    if text in _NULLS:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if len(text) > MAX_NUMBER_CHARS and (_INT_RE.match(text) or _FLOAT_RE.match(text) or text[:2] in ("0x", "0o")):
        raise _NumberTooLong
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


# --- composing: libyaml (fast, no positions) and ruamel.yaml (positions) ---------------------------


class _FastLoader(yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader):  # type: ignore[misc]
    """libyaml's parser and composer (PyYAML's own without libyaml); scalars are only marked plain
    or not, the builder types them."""

    def resolve(self, kind: Any, value: Any, implicit: Any, _scalar: type = yaml.ScalarNode) -> str:
        if kind is _scalar:  # called for every node: kept short
            return _PLAIN if implicit[0] else _STR
        return _MAP if kind is yaml.MappingNode else _SEQ

    # Also called for every node, by libyaml's composer, and useless here (no path resolvers).
    # C callables instead of PyYAML's Python no-ops save a Python call per node (~10% of composing).
    descend_resolver = slice  # called as (parent, index)
    ascend_resolver = object  # called as ()


class _Resolver(VersionedResolver):
    """ruamel.yaml's counterpart of :meth:`_FastLoader.resolve`."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Tag:
        if kind is ScalarNode:
            return Tag(suffix=_PLAIN if implicit[0] else _STR)
        return Tag(suffix=_MAP if kind is MappingNode else _SEQ)


@dataclass
class _Alias:
    """Where an alias (``*name``) is written; composers hand back the anchored node itself."""

    node: Any
    start_mark: Any
    anchor: str
    id = "alias"  # like ScalarNode.id, MappingNode.id, SequenceNode.id


class _Composer(Composer):
    """ruamel.yaml's composer, keeping each alias's own position and refusing unknown aliases our way."""

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self.warn_double_anchors = False  # YAML allows redefining an anchor

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.parser.check_event(AliasEvent):
            event = self.parser.get_event()
            if event.anchor not in self.anchors:
                mark = event.start_mark
                raise YamlProblem(
                    mark.line + 1,
                    mark.column + 1,
                    f"alias *{event.anchor} refers to no finished anchor &{event.anchor}",
                )
            return _Alias(self.anchors[event.anchor], event.start_mark, event.anchor)
        return super().compose_node(parent, index)


class _Scanner(Scanner):
    """ruamel.yaml's scanner, stopping at MAX_DEPTH open flow collections: it looks ahead over every
    open ``[`` and ``{`` for each token, so 5,000 of them (10 KB) would take seconds, not milliseconds."""

    def fetch_flow_collection_start(self, TokenClass: Any, to_push: str) -> None:
        if self.flow_level >= MAX_DEPTH:
            mark = self.reader.get_mark()
            raise YamlProblem(
                mark.line + 1, mark.column + 1, f"the file nests too deeply (more than {MAX_DEPTH} levels)"
            )
        super().fetch_flow_collection_start(TokenClass, to_push)


def _ruamel() -> YAML:
    reader = YAML(typ="safe", pure=True)
    reader.Scanner = _Scanner
    reader.Composer = _Composer
    reader.Resolver = _Resolver
    reader.max_depth = MAX_DEPTH + 1  # it counts scalars as a level too
    return reader


def _bang_tags(text: str) -> set[tuple[int, int]]:
    """Where the non-specific tag ``!`` is written (composers replace it with a resolved tag)."""
    found: set[tuple[int, int]] = set()
    try:
        parser = YAML(typ="safe", pure=True)
        parser.Scanner = _Scanner
        for event in parser.parse(text):
            if getattr(event, "ctag", None) is not None and str(event.ctag) == "!":
                found.add((event.start_mark.line, event.start_mark.column))
    except YAMLError:
        pass  # composing the file reports it
    return found


def _compose_located(text: str) -> Any:
    """ruamel.yaml's node graph of one document (None if empty); YamlProblem if it is not YAML."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _ruamel().compose(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        if e.problem == "but found another document":
            raise YamlProblem(line, col, "a quota file holds one YAML document; split it into several files") from None
        if "maximum depth" in str(e.problem):
            raise YamlProblem(line, col, f"the file nests too deeply (more than {MAX_DEPTH} levels)") from None
        what = " ".join(x for x in (e.context, e.problem) if x) or "invalid YAML"
        raise YamlProblem(line, col, f"invalid YAML: {what}") from None
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
        raise YamlProblem(line, col, f"invalid YAML: {what}") from None


# --- nodes -> data ---------------------------------------------------------------------------------


class _Builder:
    """Plain data from either library's nodes. With a ``doc`` it records positions and reports
    problems; without one (the fast path) it raises NeedsDetail at the first thing to report.
    Written for speed: it visits every node of a big lab's file on each reload."""

    def __init__(
        self,
        doc: Document | None = None,
        filename: str = "",
        bangs: set[tuple[int, int]] | None = None,
    ):
        self.doc, self.filename, self.bangs = doc, filename, bangs
        self.total = 0  # keys and values so far, each alias counted as large as what it stands for
        self.built: dict[int, tuple[Any, int]] = {}  # finished mappings and lists -> (value, size)
        self.building: set[int] = set()  # mappings and lists not finished yet

    def fail(self, mark: Any, message: str) -> NoReturn:
        if self.doc is None:
            raise NeedsDetail
        raise YamlProblem(mark.line + 1, mark.column + 1, message)

    def too_many(self, mark: Any) -> NoReturn:
        self.fail(mark, "the file expands to too many values (aliases nest too deeply)")

    def tag(self, node: Any) -> str:
        if self.bangs and (node.start_mark.line, node.start_mark.column) in self.bangs:
            return "!"
        return str(node.tag)

    def value(self, node: Any, path: KeyPath | None, depth: int) -> tuple[Any, int]:
        """The value of ``node`` and how many values it expands to; records where it starts
        at ``path`` (None: inside an alias or a duplicate, where nothing is recorded)."""
        if node.id == "scalar":  # most nodes: the short way
            tag = node.tag if self.bangs is None else self.tag(node)
            if tag == _PLAIN:
                try:
                    value: Any = _plain_scalar(node.value)
                except _NumberTooLong:
                    self.fail(
                        node.start_mark, f"a number of {len(node.value)} characters is far too large for a quota file"
                    )
            elif tag == _STR or tag == "!":
                value = node.value
            else:
                self.fail(node.start_mark, f"YAML tags such as {tag!r} are not allowed in quota files")
            self.total += 1
            if self.total > MAX_VALUES:
                self.too_many(node.start_mark)
            if path is not None and self.doc is not None:
                mark = node.start_mark
                self.doc.values[path] = (self.filename, mark.line + 1, mark.column + 1)
            return value, 1
        mark = node.start_mark
        anchor = None
        if node.id == "alias":  # ruamel.yaml only: libyaml's composer gives the node itself
            node, anchor = node.node, node.anchor
        if node.id == "scalar":
            value, size = self.value(node, None, depth)
            added = 0  # counted just now
        elif id(node) in self.built:  # met again through an alias: no positions inside
            value, size = self.built[id(node)]
            added = size
        elif id(node) in self.building:
            name = anchor or "?"
            self.fail(mark, f"alias *{name} refers to no finished anchor &{name}")
        else:
            value, size = self.container(node, path, depth + 1)
            added = 1  # what it holds was counted as it was read
        self.total += added
        if self.total > MAX_VALUES:
            self.too_many(mark)
        if path is not None and self.doc is not None:
            self.doc.values[path] = (self.filename, mark.line + 1, mark.column + 1)
        return value, size

    def container(self, node: Any, path: KeyPath | None, depth: int) -> tuple[Any, int]:
        mark = node.start_mark
        tag = self.tag(node)
        if tag != _MAP and tag != _SEQ:
            self.fail(mark, f"YAML tags such as {tag!r} are not allowed in quota files")
        if depth > MAX_DEPTH:
            self.fail(mark, f"the file nests too deeply (more than {MAX_DEPTH} levels)")
        self.building.add(id(node))
        if node.id == "sequence":
            items: list[Any] = []
            size = 1
            located = path is not None and self.doc is not None
            for child in node.value:
                item, n = self.value(child, (*path, len(items)) if located else None, depth)  # type: ignore[misc]
                items.append(item)
                size += n
            built: tuple[Any, int] = (items, size)
        else:
            built = self.mapping(node, path if self.doc is not None else None, depth)
        self.building.discard(id(node))
        self.built[id(node)] = built
        return built

    def mapping(self, node: Any, path: KeyPath | None, depth: int) -> tuple[dict[str, Any], int]:
        data: dict[str, Any] = {}
        merges: list[tuple[Any, Any]] = []
        size = 1
        for key_node, value_node in node.value:
            target = key_node.node if key_node.id == "alias" else key_node
            if target.id != "scalar":
                self.fail(key_node.start_mark, "mapping keys must be plain names, not lists or mappings")
            tag = target.tag if self.bangs is None else self.tag(target)
            if tag != _PLAIN and tag != _STR and tag != "!":
                self.fail(key_node.start_mark, f"YAML tags such as {tag!r} are not allowed in quota files")
            key = target.value
            self.total += 1
            if self.total > MAX_VALUES:
                self.too_many(key_node.start_mark)
            size += 1
            if key == "<<" and value_node.id != "scalar":
                merged, n = self.value(value_node, None, depth)
                merges.append((merged, value_node.start_mark))
                size += n
                continue
            if key in data:
                self.duplicate(path, key, key_node.start_mark)
                self.value(value_node, None, depth)  # checked and counted, not kept
                continue
            sub = None
            if path is not None:
                sub = (*path, key)
                mark = key_node.start_mark
                self.doc.keys[sub] = (self.filename, mark.line + 1, mark.column + 1)  # type: ignore[union-attr]
            data[key], n = self.value(value_node, sub, depth)
            size += n
        for merged, mark in merges:  # the mapping's own keys win, then the first merged mapping
            for part in merged if isinstance(merged, list) else [merged]:
                if not isinstance(part, dict):
                    self.fail(mark, "'<<' merges only mappings (or a list of mappings)")
                for k, v in part.items():
                    data.setdefault(k, v)
        return data, size

    def duplicate(self, path: KeyPath | None, key: str, mark: Any) -> None:
        if self.doc is None:
            raise NeedsDetail
        first = self.doc.keys.get((*path, key)) if path is not None else None
        at = f" (first at line {first[1]})" if first else ""
        what = ".".join(str(p) for p in (*(path or ()), key))
        self.doc.problems.append(
            (
                (self.filename, mark.line + 1, mark.column + 1),
                f"duplicate key {what}{at}; each key may appear once in a mapping",
            )
        )


def _plain_data(node: Any, depth: int) -> Any:
    """:class:`_Builder`'s data for a short file without aliases (most files), faster: each node
    is met once, and such a file holds fewer than MAX_VALUES keys and values (at most 3 a character)."""
    kind = node.id
    tag = node.tag
    if kind == "scalar":
        if tag == _PLAIN:
            return _plain_scalar(node.value)
        if tag != _STR:
            raise NeedsDetail
        return node.value
    if depth >= MAX_DEPTH or (tag != _MAP and tag != _SEQ):
        raise NeedsDetail
    if kind == "sequence":
        return [_plain_data(child, depth + 1) for child in node.value]
    data: dict[str, Any] = {}
    merges = []
    for key_node, value_node in node.value:
        key = key_node.value
        if key_node.id != "scalar" or key in data or (key_node.tag != _PLAIN and key_node.tag != _STR):
            raise NeedsDetail
        if key == "<<" and value_node.id != "scalar":
            merges.append(_plain_data(value_node, depth + 1))
            continue
        data[key] = _plain_data(value_node, depth + 1)
    for merged in merges:
        for part in merged if isinstance(merged, list) else [merged]:
            if not isinstance(part, dict):
                raise NeedsDetail
            for k, v in part.items():
                data.setdefault(k, v)
    return data


_UNREAD = object()  # not composed yet
_FAILED = object()  # libyaml could not compose the text


class YamlText:
    """One quota file's text, composed by libyaml at most once for both readings: the fast one,
    and the one with positions that follows when the policy turns out to be wrong."""

    def __init__(self, text: str):
        self.text = text
        self.too_big = file_too_big(len(text))
        self.tags = not self.too_big and "!" in text and _MAY_HAVE_TAGS.search(text) is not None
        self._node: Any = _UNREAD

    def _libyaml_node(self) -> Any:
        if self._node is _UNREAD:
            loader = _FastLoader(self.text)
            try:
                self._node = loader.get_single_node()
            except yaml.YAMLError:
                self._node = _FAILED
            finally:
                loader.dispose()
        return self._node

    def data(self) -> Any:
        """The data of a well-formed quota file, without positions (libyaml, the common case);
        raises NeedsDetail on anything :meth:`located` would report or read differently."""
        node = _FAILED if self.tags or self.too_big else self._libyaml_node()
        if node is _FAILED:
            raise NeedsDetail
        if node is None:
            return None
        if "*" not in self.text and len(self.text) < MAX_VALUES // 4:
            return _plain_data(node, 0)  # no aliases, no tags: nothing for _Builder to count or check
        return _Builder().value(node, (), 0)[0]

    def located(self, filename: str) -> Document:
        """The data with the position of every key and value; raises YamlProblem when the file
        cannot be read as a quota file at all."""
        text = self.text
        if self.too_big:
            raise YamlProblem(1, 1, self.too_big)
        node = _FAILED
        if not self.tags and not ("*" in text and _MAY_HAVE_ALIASES.search(text)):
            node = self._libyaml_node()
        if node is _FAILED:  # ruamel.yaml reads it, or says why not
            try:
                node = _compose_located(text)
            except YamlProblem:
                # What the fast path read (libyaml), this path reads too, if without an alias's place.
                node = _FAILED if self.tags else self._libyaml_node()
                if node is _FAILED:
                    raise
        doc = Document(None)
        if node is not None:
            doc.data = _Builder(doc, filename, _bang_tags(text) if self.tags else None).value(node, (), 0)[0]
        return doc


def read_fast(text: str) -> Any:
    """:meth:`YamlText.data` of ``text``."""
    return YamlText(text).data()


def read_located(text: str, filename: str) -> Document:
    """:meth:`YamlText.located` of ``text``."""
    return YamlText(text).located(filename)
