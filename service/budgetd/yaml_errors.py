"""YAML with line numbers: parse once, keep the node tree, and turn msgspec errors into
``file:line: field: message`` in words an admin understands."""

from __future__ import annotations

import re
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
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is not None:
                _reject_duplicate_keys(root, filename, error_type)
            data = loader.construct_document(root) if root is not None else None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            line = mark.line + 1 if mark is not None else 1
            raise error_type(f"{filename}:{line}: not valid YAML: {exc.problem}") from None
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
                return value_node
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        child: yaml.Node = node.value[part]
        return child
    return None


def _reject_duplicate_keys(node: yaml.Node, filename: str, error_type: type[Exception]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise error_type(f"{filename}:{line}: key {key!r} appears twice in one mapping")
            seen.add(key)
            _reject_duplicate_keys(value_node, filename, error_type)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicate_keys(item, filename, error_type)


def parse_path(text: str) -> FieldPath:
    parts: list[PathPart] = []
    for match in _PATH_PART.finditer(text):
        name, index, quoted = match.groups()
        if name is not None:
            parts.append(name)
        elif index is not None:
            parts.append(int(index))
        else:
            parts.append(quoted)
    return tuple(parts)


def dotted(path: FieldPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _admin_words(message: str) -> str:
    def type_word(match: re.Match[str]) -> str:
        name = match.group(1)
        return _TYPE_WORDS.get(name, name)

    unknown = re.match(r"Object contains unknown field `(.+)`", message)
    if unknown:
        return f"unknown key {unknown.group(1)!r} (check the spelling; see policies/schema.json)"
    missing = re.match(r"Object missing required field `(.+)`", message)
    if missing:
        return f"missing required key {missing.group(1)!r}"
    wrong = re.match(r"Expected `(.+?)`, got `(.+?)`$", message)
    if wrong:
        expected = " or ".join(
            _TYPE_WORDS.get(t.strip(), t.strip()) for t in wrong.group(1).split("|")
        )
        return f"wrong type: expected {expected}, got {_TYPE_WORDS.get(wrong.group(2), wrong.group(2))}"
    bound = re.match(r"Expected `(\w+)` (>=|<=|>|<) (\S+)$", message)
    if bound:
        relation = {">=": "at least", "<=": "at most", ">": "more than", "<": "less than"}
        value = bound.group(3)
        if bound.group(2) == ">=" and value == "0":
            return "must not be negative"
        return f"must be {relation[bound.group(2)]} {value}"
    pattern = re.match(r"Expected `str` matching regex `(.+)`$", message)
    if pattern:
        return f"has the wrong format (expected to match {pattern.group(1)})"
    invalid = re.match(r"Invalid enum value (.+)$", message)
    if invalid:
        return f"{invalid.group(1)} is not one of the allowed values"
    return re.sub(r"`(\w+)`", type_word, message)


def located_validation_error(exc: msgspec.ValidationError, document: YamlDocument) -> str:
    """``file:line: field: message`` for a msgspec validation error on ``document``."""
    match = _AT_PATH.match(str(exc))
    assert match is not None  # the pattern matches any string
    message = match.group("message")
    path = parse_path(match.group("path") or "")
    unknown = re.match(r"Object contains unknown field `(.+)`", message)
    if unknown:
        key = unknown.group(1)
        line = document.key_line(path, key)
        field = dotted((*path, key))
    else:
        missing = re.match(r"Object missing required field `(.+)`", message)
        line = document.line_of(path)
        field = dotted((*path, missing.group(1))) if missing else dotted(path)
    return f"{document.filename}:{line}: {field}: {_admin_words(message)}"
