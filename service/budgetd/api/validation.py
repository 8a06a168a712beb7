"""The one validation layer of the HTTP API: request bodies and query strings → the contract's
Structs, strictly, or a ``BudgetdError`` that names the field and says what is wrong in words.

Strict means what the wire types say: an integer is a JSON integer (``"1200"``, ``1200.0`` and
``1e3`` are refused), names and ids match their pattern (explained in words, never as a regex),
unknown fields are refused, bodies are at most ``MAX_BODY_BYTES`` and nest at most as deep as
their Structs do (unknown ``usage`` fields, which are skipped, are bounded by the size; a body
deeper than msgspec's recursion limit is refused as such).

The fast path (``api/fastpath.py``) and the Litestar handlers both decode through here, so a
request is judged the same way on every route.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

import msgspec

from budgetd.errors import InvalidRequest, MalformedRequest, PayloadTooLarge
from budgetd.yaml_errors import (
    dotted,
    first_failing,
    message_words,
    parse_path,
    resolve_path,
    strip_type,
)

T = TypeVar("T")

MAX_BODY_BYTES = 64 * 1024
"""Every request body budgetd takes fits in a few hundred bytes; 64 KiB leaves room for long
metadata without letting a client make the service parse megabytes."""

MAX_URL_CHARS = 4096
"""Longest path plus query string the app answers; longer ones are 414 (ids are at most 256
characters, names 128)."""


class NoParameters(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The query of a route that takes none: any parameter is refused, by name."""


_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_KEY_AT = re.compile(r"^(?P<message>.*?) - at `key` in `\$(?P<path>[^`]*)`$", re.DOTALL)
_WHOLE_NUMBER = re.compile(r"-?[0-9]+")
_MISSING = re.compile(r"Object missing required field `(.+)`")
_UNKNOWN = re.compile(r"Object contains unknown field `(.+)`")

_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decoder(type_: type[T]) -> msgspec.json.Decoder[T]:
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    return decoder


def required_fields(type_: type[Any]) -> list[str]:
    return [f.encode_name for f in msgspec.structs.fields(type_) if f.required]


def _fields(type_: Any) -> list[str]:
    return [f.encode_name for f in msgspec.structs.fields(type_)]


def decode(body: bytes, type_: type[T]) -> T:
    """``body`` as a ``type_``; ``InvalidRequest`` (422), ``MalformedRequest`` (400) or
    ``PayloadTooLarge`` (413) otherwise."""
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(
            f"the body is {len(body)} bytes; budgetd takes at most {MAX_BODY_BYTES}"
        )
    try:
        return _decoder(type_).decode(body)
    except msgspec.ValidationError as exc:
        raise invalid(exc, type_, _keyed(str(exc), body)) from None
    except msgspec.DecodeError as exc:
        if not body.strip():
            needed = ", ".join(required_fields(type_))
            raise InvalidRequest(
                f"the request body is empty: send a JSON object with {needed}"
                if needed
                else "the request body is empty: send a JSON object (it may be {})"
            ) from None
        raise MalformedRequest(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest(
            "the body nests too deeply: no field of this request nests more than 3 levels"
        ) from None


_whole_number_fields: dict[Any, frozenset[str]] = {}


def _integers(type_: Any) -> frozenset[str]:
    """The query fields of ``type_`` that are integers."""
    names = _whole_number_fields.get(type_)
    if names is None:
        names = _whole_number_fields[type_] = frozenset(
            f.encode_name for f in msgspec.structs.fields(type_) if strip_type(f.type) is int
        )
    return names


def _keyed(message: str, body: bytes) -> Any:
    """The body as plain JSON when the error is about some key of a mapping (msgspec names
    no key there: the message is worded from the data); None otherwise."""
    if "[...]" not in message and " - at `key` in " not in message:
        return None
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None


def convert_query(params: Iterable[tuple[str, str]], type_: type[T]) -> T:
    """A query string's parameters, in the order written, as a ``type_`` (every field a string
    or a string-typed name); a repeated parameter is refused rather than silently taking one of
    the values. The first wrong parameter written is the one named: pass the query's items in
    order (Litestar's ``multi_items()`` walks a set, so which one was named varied by process)."""
    seen: dict[str, str] = {}
    integers = _integers(type_)
    for name, value in params:
        if name in seen:
            raise InvalidRequest(f"query parameter {name!r} is given twice", field=name)
        # Integers are integers in a query too: msgspec's text conversion would read "1.0"
        # and "1e1" as whole numbers.
        if name in integers and not _WHOLE_NUMBER.fullmatch(value):
            shown = value if len(value) <= 40 else value[:40] + "…"
            words = message_words("Expected `int`, got `str`", shown, int)
            raise InvalidRequest(f"query parameter {name} {words}", field=name)
        seen[name] = value
    try:
        # Query values are text: strict=False reads "50" as 50.
        return msgspec.convert(seen, type_, strict=False)
    except msgspec.ValidationError as exc:
        raise invalid(exc, type_, seen, where="query parameter") from None


def invalid(
    exc: msgspec.ValidationError, type_: Any, data: Any, where: str = "field"
) -> InvalidRequest:
    """msgspec's error as a 422 naming the field, in words (patterns as their meaning)."""
    if key_at := _KEY_AT.match(str(exc)):
        return _invalid_key(key_at.group("message"), key_at.group("path"), type_, data, where)
    match = _AT.match(str(exc))
    assert match is not None  # the pattern matches any string
    message = match.group("message")
    path = parse_path(match.group("path") or "")
    path, value, tp = resolve_path(path, data, type_)
    if missing := _MISSING.match(message):
        field = dotted((*path, missing.group(1)))
        return InvalidRequest(f"{where} {field} is required", field=field)
    if unknown := _UNKNOWN.match(message):
        field = dotted((*path, unknown.group(1)))
        known = _fields(_struct_at(type_, path))
        return InvalidRequest(
            f"{where} {field} is unknown; this request takes " + ", ".join(known), field=field
        )
    if isinstance(value, str) and len(value) > 40:
        value = value[:40] + "…"
    field = dotted(path)
    return InvalidRequest(f"{where} {field} {message_words(message, value, tp)}", field=field)


def _invalid_key(message: str, at: str, type_: Any, data: Any, where: str) -> InvalidRequest:
    """A mapping's key is wrong (msgspec says only "a key in ``$.files``"): name the first key
    that fails the key type, when the body was read (a body is decoded by msgspec alone)."""
    path, mapping, tp = resolve_path(parse_path(at), data, type_)
    field = dotted(path)
    args = typing.get_args(strip_type(tp)) if tp is not None else ()
    key = (
        first_failing([(k, k) for k in mapping], args[0])
        if isinstance(mapping, dict) and args
        else None
    )
    if key is None:
        return InvalidRequest(f"{where} {field}: a key {message_words(message)}", field=field)
    shown = key if len(key) <= 40 else key[:40] + "…"
    words = message_words(message, shown, args[0])
    return InvalidRequest(f"{where} {field}: key {shown!r} {words}", field=field)


def _struct_at(type_: Any, path: tuple[Any, ...]) -> Any:
    _, _, tp = resolve_path(path, None, type_)
    return strip_type(tp) if tp is not None else type_
