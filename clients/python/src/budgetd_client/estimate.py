"""The input-token figure held for a request, from its keyword arguments: the upper bound of
:mod:`budgetd_client.core.bound` (UTF-8 bytes of the request's JSON plus documented overheads;
see ``docs/decisions.md``), not a guess."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from budgetd_client.core.bound import input_bound
from budgetd_client.core.calls import cache_ttl_of

__all__ = ["cache_ttl_of", "estimate_input_tokens"]


def estimate_input_tokens(
    *,
    messages: Iterable[Any],
    system: Any = None,
    tools: Iterable[Any] | None = None,
    margin: float = 0.0,
) -> int:
    """An upper bound on the prompt's input tokens (``margin`` adds a further fraction)."""
    request: dict[str, Any] = {"messages": [_plain(m) for m in messages]}
    if system is not None:
        request["system"] = _plain(system)
    if tools:
        request["tools"] = [_plain(t) for t in tools]
    bound = input_bound(msgspec.json.encode(request), request)
    return math.ceil(bound.tokens * (1 + margin))


def _plain(obj: Any) -> Any:
    """Mappings and lists as they are; the SDK's pydantic models as the JSON they send."""
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json", exclude_none=True)
    return str(obj)
