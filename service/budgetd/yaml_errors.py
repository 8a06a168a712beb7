"""YAML with line numbers: parse once, keep the node tree, and turn msgspec errors into
``file:line: field: message`` in words an admin understands."""

from __future__ import annotations

import re
import types
import typing
from typing import Any

import msgspec
import yaml

PathPart = str | int
FieldPath = tuple[PathPart, ...]

_AT_PATH = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_PATH_PART = re.compile(r"\.([A-Za-z0-9_\-]+)|\[(\d+)\]|\[['\"]?(.*?)['\"]?\]")

_TYPE_WORDS = {
    "int": "a whole number",
    "float": "a number",
    "str": "text",
    "bool": "true or false",
    "array": "a list",
    "object": "a mapping of keys to values",
    "null": "nothing",
    "date": "a date (YYYY-MM-DD)",
    "datetime": "a date and time",
    "decimal": "a number",
}


_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml when present: the pure-Python scanner needs about a minute for 100,000 overrides."""


class YamlDocument:
    """A parsed YAML document that can say on which line any field path starts."""

    def __init__(self, filename: str, root: yaml.Node | None, data: Any) -> None:
        self.filename = filename
        self.root = root
        self.data = data

    @classmethod
    def parse(
        cls, text: str, filename: str, *, error_type: type[Exception] = ValueError
    ) -> YamlDocument:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            if root is not None:
                _bound_aliases(root, filename, error_type)
                _reject_duplicate_keys(root, (), filename, error_type)
            data = loader.construct_document(root) if root is not None else None
        except RecursionError:
            raise error_type(
                f"{filename}:1: (YAML syntax): the document nests too deeply"
            ) from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            raise error_type(f"{filename}:{line}: (YAML syntax): {_yaml_problem(exc)}") from None
        except yaml.YAMLError as exc:
            raise error_type(f"{filename}:1: (YAML syntax): not valid YAML: {exc}") from None
        finally:
            loader.dispose()
        return cls(filename, root, data)

    def node_at(self, path: FieldPath) -> yaml.Node | None:
        """The deepest node on ``path`` (a path into a missing field stops at its parent)."""
        node = self.root
        for part in path:
            child = _child(node, part)
            if child is None:
                break
            node = child
        return node

    def line_of(self, path: FieldPath) -> int:
        node = self.node_at(path)
        return node.start_mark.line + 1 if node is not None else 1

    def key_line(self, path: FieldPath, key: str) -> int:
        """The line of ``key`` inside the mapping at ``path`` (for unknown keys)."""
        node = self.node_at(path)
        if isinstance(node, yaml.MappingNode):
            for key_node, _ in node.value:
                if key_node.value == key:
                    return int(key_node.start_mark.line) + 1
        return self.line_of(path)


def _child(node: yaml.Node | None, part: PathPart) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if str(key_node.value) == str(part):
                found: yaml.Node = value_node
                return found
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        child: yaml.Node = node.value[part]
        return child
    return None


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    """PyYAML's problem, with its context ("while parsing a flow sequence", line) first."""
    problem = exc.problem or "cannot be parsed"
    if exc.context and exc.context_mark is not None and exc.context_mark != exc.problem_mark:
        return f"not valid YAML: {exc.context} (line {exc.context_mark.line + 1}), {problem}"
    return f"not valid YAML: {problem}"


MAX_ALIASED_NODES = 100_000
"""How many nodes a document's aliases may repeat. A few hundred bytes of nested aliases can
stand for billions of nodes ("billion laughs"), which every later step (the duplicate-key
check, msgspec) would walk: a 416-byte policy posted to the plan route held the service for
minutes. Real anchors (shared defaults) repeat a few nodes each."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def _bound_aliases(root: yaml.Node, filename: str, error_type: type[Exception]) -> None:
    """Refuse a document whose aliases repeat more than ``MAX_ALIASED_NODES`` nodes, or refer
    to a node that contains them. Linear in the document's own nodes (each node's expanded
    size is computed once) and iterative (a deep document is refused by the checks after this
    one, as before, not by this walk's own recursion)."""
    sizes: dict[int, int] = {}  # node id → its size as expanded
    ancestors: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        line = int(node.start_mark.line) + 1
        if leaving:
            ancestors.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[id(node)] - len(sizes) > MAX_ALIASED_NODES:
                raise error_type(
                    f"{filename}:{line}: (YAML syntax): aliases repeat more than "
                    f"{MAX_ALIASED_NODES:,} nodes; write the values out or share fewer"
                )
            continue
        if id(node) in sizes:
            continue
        ancestors.add(id(node))
        stack.append((node, True))
        for child in _children(node):
            if id(child) in ancestors:
                raise error_type(
                    f"{filename}:{line}: (YAML syntax): an alias refers to a node that contains it"
                )
            stack.append((child, False))


def _reject_duplicate_keys(
    node: yaml.Node, path: FieldPath, filename: str, error_type: type[Exception]
) -> None:
    """PyYAML silently keeps the last of two equal keys; a policy must not lose a line that way."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = int(key_node.start_mark.line) + 1
            if key in seen:
                raise error_type(
                    f"{filename}:{line}: {dotted((*path, key))}: key {key!r} appears twice in "
                    f"one mapping (first on line {seen[key]})"
                )
            seen[key] = line
            _reject_duplicate_keys(value_node, (*path, key), filename, error_type)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _reject_duplicate_keys(item, (*path, index), filename, error_type)


_ANY_KEY = "[...]"
"""msgspec's path segment for "some key of this mapping"; resolved against the data."""

PATTERN_WORDS: dict[str, str] = {}
"""Regex → what it means in words, for "does not match" errors (see :func:`describe_pattern`)."""


def describe_pattern(regex: str, words: str) -> str:
    """Register the admin-facing meaning of a field pattern; returns ``regex`` for inline use."""
    PATTERN_WORDS[regex] = words
    return regex


def parse_path(text: str) -> FieldPath:
    parts: list[PathPart] = []
    for match in _PATH_PART.finditer(text):
        name, index, quoted = match.groups()
        if name is not None:
            parts.append(name)
        elif index is not None:
            parts.append(int(index))
        elif quoted == "...":
            parts.append(_ANY_KEY)
        else:
            parts.append(quoted)
    return tuple(parts)


def dotted(path: FieldPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def strip_type(tp: Any) -> Any:
    """The type under ``Annotated`` and ``| None``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _child_type(tp: Any, part: PathPart) -> Any:
    tp = strip_type(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        for field in msgspec.structs.fields(tp):
            if field.encode_name == part:
                return field.type
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is list and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def first_failing(items: list[tuple[Any, Any]], tp: Any) -> Any:
    """The first key of ``items`` whose converted part fails ``tp`` (msgspec checks in order)."""
    for key, value in items:
        try:
            msgspec.convert(value, tp, strict=False)
        except msgspec.ValidationError:
            return key
    return None


def resolve_path(path: FieldPath, data: Any, target: Any) -> tuple[FieldPath, Any, Any]:
    """Replace each "any key" segment by the real key, following ``data`` and ``target``.

    Returns the concrete path, the value found there (or None) and its declared type (or None).
    """
    resolved: list[PathPart] = []
    value, tp = data, target
    for part in path:
        actual: PathPart | None = part
        if part == _ANY_KEY:
            actual = None
            if isinstance(value, dict) and tp is not None:
                rest_type = _child_type(tp, part)
                if rest_type is not None:
                    key = first_failing(list(value.items()), rest_type)
                    actual = str(key) if key is not None else None
        if actual is None:
            return (*resolved, part, *path[len(resolved) + 1 :]), None, None
        resolved.append(actual)
        tp = _child_type(tp, actual) if tp is not None else None
        if isinstance(value, dict):
            value = value.get(actual)
        elif isinstance(value, list) and isinstance(actual, int) and actual < len(value):
            value = value[actual]
        else:
            value = None
    return tuple(resolved), value, tp


def _literal_values(tp: Any) -> tuple[Any, ...]:
    tp = strip_type(tp)
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else ()


def _type_words(names: str) -> str:
    words: list[str] = []
    for name in names.split("|"):
        word = _TYPE_WORDS.get(name.strip(), name.strip())
        if word not in words:
            words.append(word)
    if "a number" in words and "a whole number" in words:
        words.remove("a whole number")
    return " or ".join(words)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def message_words(message: str, value: Any = None, tp: Any = None) -> str:
    unknown = re.match(r"Object contains unknown field `(.+)`", message)
    if unknown:
        return f"unknown key {unknown.group(1)!r} (check the spelling; see policies/schema.json)"
    missing = re.match(r"Object missing required field `(.+)`", message)
    if missing:
        return f"missing required key {missing.group(1)!r}"
    wrong = re.match(r"Expected `(.+?)`, got `(.+?)`$", message)
    if wrong:
        got = _TYPE_WORDS.get(wrong.group(2), wrong.group(2))
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            got += f" {value!r}"
        return f"wrong type: expected {_type_words(wrong.group(1))}, got {got}"
    bound = re.match(r"Expected `(\w+)` (>=|<=|>|<) (\S+)$", message)
    if bound:
        relation = {">=": "at least", "<=": "at most", ">": "more than", "<": "less than"}
        limit = bound.group(3)
        got = f" (got {_shown(value)})" if value is not None else ""
        if bound.group(2) == ">=" and limit == "0":
            return f"must not be negative{got}"
        return f"must be {relation[bound.group(2)]} {limit}{got}"
    length = re.match(r"Expected `(\w+)` of length (>=|<=) (\d+)$", message)
    if length:
        most = "at least" if length.group(2) == ">=" else "at most"
        noun = {"array": "item(s)", "object": "entry(ies)"}.get(length.group(1), "character(s)")
        return f"must have {most} {length.group(3)} {noun}"
    pattern = re.match(r"Expected `str` matching regex ['`](.+)['`]$", message)
    if pattern:
        regex = pattern.group(1).replace("\\\\", "\\")
        words = PATTERN_WORDS.get(regex, f"text matching {regex}")
        got = f" (got {_shown(value)})" if value is not None else ""
        return f"has the wrong format: expected {words}{got}"
    invalid = re.match(r"Invalid enum value (.+)$", message)
    if invalid:
        allowed = _literal_values(tp)
        if allowed:
            return f"{invalid.group(1)} is not allowed here; use one of " + ", ".join(
                str(v) for v in allowed
            )
        return f"{invalid.group(1)} is not one of the allowed values"
    return re.sub(r"`(\w+)`", lambda m: _TYPE_WORDS.get(m.group(1), m.group(1)), message)


_KEY_IN = re.compile(r"^(?P<message>.*?) - at `key` in `\$(?P<path>[^`]*)`$", re.DOTALL)


def located_validation_error(
    exc: msgspec.ValidationError, document: YamlDocument, target: Any = None
) -> str:
    """``file:line: field: message`` for a msgspec validation error on ``document``.

    ``target`` is the type ``document.data`` was converted to: with it, errors inside a mapping
    name the actual key (msgspec only says "some key") and enum errors list the allowed values.
    """
    text = str(exc)
    key_in = _KEY_IN.match(text)
    if key_in:
        # The error is about a mapping's *key*: find the first key that fails the key type.
        path, mapping, tp = resolve_path(parse_path(key_in.group("path")), document.data, target)
        key_type = typing.get_args(strip_type(tp))[0] if tp is not None else None
        bad = None
        if isinstance(mapping, dict) and key_type is not None:
            bad = first_failing([(k, k) for k in mapping], key_type)
        if bad is None:
            line = document.line_of(path)
            words = message_words(key_in["message"])
            return f"{document.filename}:{line}: {dotted(path)}: key {words}"
        line = document.key_line(path, str(bad))
        words = message_words(key_in["message"], bad, key_type)
        return f"{document.filename}:{line}: {dotted((*path, str(bad)))}: key {words}"
    match = _AT_PATH.match(text)
    assert match is not None  # the pattern matches any string
    message = match.group("message")
    path, value, tp = resolve_path(parse_path(match.group("path") or ""), document.data, target)
    unknown = re.match(r"Object contains unknown field `(.+)`", message)
    if unknown:
        key = unknown.group(1)
        line = document.key_line(path, key)
        field = dotted((*path, key))
    else:
        missing = re.match(r"Object missing required field `(.+)`", message)
        line = document.line_of(path)
        field = dotted((*path, missing.group(1))) if missing else dotted(path)
    return f"{document.filename}:{line}: {field}: {message_words(message, value, tp)}"
