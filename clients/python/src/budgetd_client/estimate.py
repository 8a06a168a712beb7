"""What a Messages API request will cost at most, read from its keyword arguments.

The input-token estimate (used when the caller does not allow an extra ``count_tokens``
request) is deliberately simple and documented, because a reserve only needs an upper-ish
bound: the commit settles the real usage, and an under-estimate is recorded as an overrun.

    estimate = ceil(chars / 4 × (1 + margin)) + IMAGE_TOKENS × images

``chars`` counts the text of ``system``, every message's content (text blocks, tool inputs and
tool results, document text) and the JSON of every tool definition. Images (and base64 PDF
pages, which we cannot count without decoding) are a flat ``IMAGE_TOKENS`` each: the most an
image costs after the API's own downscaling. ``margin`` defaults to 10 %.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

CHARS_PER_TOKEN = 4
DEFAULT_MARGIN = 0.10
IMAGE_TOKENS = 1600
DEFAULT_WEB_SEARCHES = 10
"""Worst case assumed for a web-search tool without ``max_uses``."""

CacheTTL = Literal["5m", "1h"]


def _block_chars(block: Any) -> tuple[int, int]:
    """(characters, images) of one content block or string."""
    if isinstance(block, str):
        return len(block), 0
    if not isinstance(block, Mapping):
        block = _as_mapping(block)
    kind = block.get("type")
    if kind == "text":
        return len(str(block.get("text", ""))), 0
    if kind == "image":
        return 0, 1
    if kind == "document":
        source = block.get("source") or {}
        if isinstance(source, Mapping) and source.get("type") == "text":
            return len(str(source.get("data", ""))), 0
        if isinstance(source, Mapping) and source.get("type") == "content":
            return _content_chars(source.get("content"))
        return 0, 1
    if kind == "tool_result":
        return _content_chars(block.get("content"))
    if kind in ("thinking", "redacted_thinking"):
        return len(str(block.get("thinking") or block.get("data") or "")), 0
    # tool_use, server tool blocks, anything new: its JSON is a fair proxy.
    return len(json.dumps(block, default=str)), 0


def _content_chars(content: Any) -> tuple[int, int]:
    if content is None:
        return 0, 0
    if isinstance(content, str):
        return len(content), 0
    chars = images = 0
    for block in content:
        c, i = _block_chars(block)
        chars += c
        images += i
    return chars, images


def _as_mapping(obj: Any) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        return obj
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        out = dump(mode="json", exclude_none=True)
        if isinstance(out, Mapping):
            return out
    return {}


def estimate_input_tokens(
    *,
    messages: Iterable[Any],
    system: Any = None,
    tools: Iterable[Any] | None = None,
    margin: float = DEFAULT_MARGIN,
) -> int:
    """The documented heuristic: characters / 4, plus ``margin``, rounded up; images flat."""
    chars, images = _content_chars(system) if system else (0, 0)
    for message in messages:
        c, i = _content_chars(_as_mapping(message).get("content"))
        chars += c
        images += i
    for tool in tools or ():
        chars += len(json.dumps(_as_mapping(tool), default=str))
    return math.ceil(chars / CHARS_PER_TOKEN * (1 + margin)) + IMAGE_TOKENS * images


def _walk(value: Any) -> Iterable[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        yield value
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _walk(v)


def cache_ttl_of(request: Mapping[str, Any]) -> CacheTTL | None:
    """The longest prompt-cache TTL the request writes: ``"1h"`` when any ``cache_control``
    says ``"ttl": "1h"``, else ``"5m"`` when any ``cache_control`` is present, else None. The
    top-level ``cache_control`` (automatic caching) counts too."""
    found: CacheTTL | None = None
    parts = [request.get(k) for k in ("system", "messages", "tools")]
    top = request.get("cache_control")
    if isinstance(top, Mapping):
        parts.append({"cache_control": top})
    for part in parts:
        for node in _walk(part):
            control = node.get("cache_control")
            if isinstance(control, Mapping):
                if control.get("ttl") == "1h":
                    return "1h"
                found = "5m"
    return found


def web_searches_of(tools: Iterable[Any] | None) -> int:
    """The most web searches the request's server tools may run."""
    total = 0
    for tool in tools or ():
        t = _as_mapping(tool)
        if str(t.get("type", "")).startswith("web_search"):
            uses = t.get("max_uses")
            total += int(uses) if isinstance(uses, int) else DEFAULT_WEB_SEARCHES
    return total


def present(kwargs: Mapping[str, Any], key: str) -> Any:
    """``kwargs[key]`` unless absent, None, or one of the SDK's omit sentinels."""
    value = kwargs.get(key)
    if value is None or type(value).__name__ in ("Omit", "NotGiven"):
        return None
    return value
