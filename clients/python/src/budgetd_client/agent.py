"""Record what a Claude Agent SDK run spent, after the fact, through ``/v1/usage``.

Each step of an agent run is one Messages API call. The SDK reports it as one or more assistant
messages; when Claude uses tools in parallel, several assistant messages share one message id
and report the same call's usage, so they are de-duplicated by id (keeping the highest
``output_tokens``, as the per-message count may be a running placeholder).

One usage record is written per de-duplicated call, with ``record_id = "agent.<message id>"``:
pricing one call at a time keeps long-context bands and the once-per-call rounding exact
(summing calls first could push the sum over a band threshold), and the message id makes the
record idempotent, so ingesting the same messages twice (or a resumed session's overlapping
messages) never double-charges.

Every record carries the run's session id (the SDK's ``session_id``, or the ``session`` given),
so the run counts on its session-scope budgets and reports group by it; a resumed session keeps
its id, and so its budget, until the policy's idle time has passed without calls.

When no assistant message carries usage (older SDKs), the result message's per-model
``model_usage`` (``modelUsage`` in stream-json) is recorded instead, one record per model.

``total_cost_usd`` is the SDK's client-side estimate. By default budgetd charges what its own
price table says about the usage. With ``prefer_sdk_cost=True`` (and a result message that has
``total_cost_usd``) the SDK's figure is charged instead: each call is first priced by budgetd
(``/v1/cost``), the SDK total is split across the calls in proportion to those prices (integer
micros, largest remainder, so the shares add up to the total exactly), and each call's record
carries its share as a reported cost (``/v1/usage`` ``cost_micros``). The ledger keeps both the
reported and the priced amount of every record; the two totals are logged when they differ.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, Literal

import msgspec

from budgetd_client.client import AsyncBudgetdClient, BudgetdClient
from budgetd_client.types import RecordResult

log = logging.getLogger("budgetd_client")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$")
Source = Literal["assistant_messages", "model_usage", "none"]
_MODEL_USAGE_KEYS = {
    "inputTokens": "input_tokens",
    "outputTokens": "output_tokens",
    "cacheReadInputTokens": "cache_read_input_tokens",
    "cacheCreationInputTokens": "cache_creation_input_tokens",
}


class AgentCall(msgspec.Struct, frozen=True, kw_only=True):
    """One call to record: its model, usage and idempotency key."""

    record_id: str
    model: str
    usage: dict[str, Any]


class AgentRecord(msgspec.Struct, frozen=True, kw_only=True):
    records: list[RecordResult]
    charged_micros: int
    """What budgetd charged (the sum of ``records``): its own price of the usage, or the SDK's
    total with ``prefer_sdk_cost``."""
    cost_micros: int
    """The cost to report: ``sdk_cost_micros`` with ``prefer_sdk_cost`` (when the SDK gave one),
    else ``charged_micros``."""
    by_model: dict[str, int]
    """The charge per model, micros."""
    sdk_cost_micros: int | None
    """``total_cost_usd`` in micros, rounded up; None when the result message had none."""
    source: Source


def _get(obj: Any, *names: str) -> Any:
    for name in names:
        value = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
        if value is not None:
            return value
    return None


def _kind(message: Any) -> str | None:
    if isinstance(message, Mapping):
        kind = message.get("type")
        return str(kind) if kind else None
    name = type(message).__name__
    if name == "AssistantMessage":
        return "assistant"
    if name == "ResultMessage":
        return "result"
    return None


def _safe_id(text: str) -> str:
    candidate = f"agent.{text}"
    if _ID.match(candidate):
        return candidate
    return "agent.h" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _as_dict(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return dict(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        out = dump(mode="json", exclude_none=True)
        return out if isinstance(out, dict) else None
    return None


def _output(usage: Mapping[str, Any]) -> int:
    value = usage.get("output_tokens")
    return int(value) if isinstance(value, int) else 0


def agent_calls(messages: Iterable[Any]) -> tuple[list[AgentCall], Any, Source]:
    """(calls to record, the result message or None, where the calls came from)."""
    steps: dict[str, AgentCall] = {}
    result: Any = None
    unnamed = 0
    session = ""
    for message in messages:
        kind = _kind(message)
        if kind == "result":
            result = message
            continue
        if kind != "assistant":
            continue
        # Python SDK: message.model/.usage/.message_id; stream-json: message["message"][...].
        inner = _get(message, "message")
        body = inner if isinstance(inner, Mapping) else message
        usage = _as_dict(_get(body, "usage"))
        model = _get(body, "model")
        if usage is None or not model:
            continue
        session = session or str(_get(message, "session_id") or "")
        mid = _get(body, "id", "message_id") or _get(message, "message_id")
        if mid is None:
            # No id to de-duplicate by: keep it, keyed by its position and content.
            unnamed += 1
            digest = hashlib.sha256(
                msgspec.json.encode([session, unnamed, model, usage])
            ).hexdigest()[:40]
            key = f"anon.{digest}"
        else:
            key = str(mid)
        seen = steps.get(key)
        # Parallel tool calls share one id and one call: keep the highest output count.
        if seen is None or _output(usage) > _output(seen.usage):
            steps[key] = AgentCall(record_id=_safe_id(key), model=str(model), usage=usage)
    if steps:
        return list(steps.values()), result, "assistant_messages"
    per_model = _get(result, "model_usage", "modelUsage") if result is not None else None
    if isinstance(per_model, Mapping) and per_model:
        session = str(_get(result, "session_id") or "")
        calls = []
        for model, counts in per_model.items():
            usage = {
                ours: int(counts[theirs])
                for theirs, ours in _MODEL_USAGE_KEYS.items()
                if isinstance(counts, Mapping) and isinstance(counts.get(theirs), int | float)
            }
            searches = counts.get("webSearchRequests") if isinstance(counts, Mapping) else None
            if searches:
                usage["server_tool_use"] = {"web_search_requests": int(searches)}
            key = (
                f"{session}.{model}"
                if session
                else hashlib.sha256(msgspec.json.encode([model, usage])).hexdigest()[:40]
            )
            calls.append(AgentCall(record_id=_safe_id(key), model=str(model), usage=usage))
        return calls, result, "model_usage"
    return [], result, "none"


def run_session(messages: Iterable[Any], result: Any) -> str | None:
    """The run's session id: the result message's ``session_id``, else the first assistant
    message's; hashed into budgetd's id form when it is not one already (the same session
    always hashes alike)."""
    found = _get(result, "session_id") if result is not None else None
    for message in messages:
        if found:
            break
        if _kind(message) == "assistant":
            found = _get(message, "session_id")
    if not found:
        return None
    text = str(found)
    return text if _ID.match(text) else "h" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _sdk_micros(result: Any) -> int | None:
    cost = _get(result, "total_cost_usd") if result is not None else None
    if cost is None:
        return None
    return math.ceil(Decimal(str(cost)) * 1_000_000)


def shares(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` micros in proportion to ``weights``: integers that add up to ``total``
    exactly (largest remainder; equal parts when every weight is 0)."""
    if not weights:
        return []
    if sum(weights) == 0:
        weights = [1] * len(weights)
    whole = sum(weights)
    parts = [total * w // whole for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: -(total * weights[i] % whole))
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _summary(
    records: list[RecordResult],
    calls: list[AgentCall],
    result: Any,
    source: Source,
    prefer_sdk_cost: bool,
) -> AgentRecord:
    by_model: dict[str, int] = {}
    for call, rec in zip(calls, records, strict=True):
        by_model[call.model] = by_model.get(call.model, 0) + rec.cost_micros
    charged = sum(r.cost_micros for r in records)
    priced = sum(r.priced_micros if r.priced_micros is not None else r.cost_micros for r in records)
    sdk = _sdk_micros(result)
    if sdk is not None and sdk != priced:
        log.info("agent run: budgetd prices it at %d micros, the SDK estimated %d", priced, sdk)
    return AgentRecord(
        records=records,
        charged_micros=charged,
        cost_micros=sdk if prefer_sdk_cost and sdk is not None else charged,
        by_model=by_model,
        sdk_cost_micros=sdk,
        source=source,
    )


def _metadata(
    base: Mapping[str, str] | None, result: Any, prefer_sdk_cost: bool
) -> dict[str, str] | None:
    meta = dict(base or {})
    cost = _get(result, "total_cost_usd") if result is not None else None
    if prefer_sdk_cost and cost is not None:
        meta["sdk_total_cost_usd"] = str(cost)
    return meta or None


def record_agent_result(
    client: BudgetdClient,
    messages: Iterable[Any],
    *,
    org: str | None = None,
    user: str | None = None,
    feature: str | None = None,
    metadata: Mapping[str, str] | None = None,
    prefer_sdk_cost: bool = False,
    session: str | None = None,
) -> AgentRecord:
    """Record an Agent SDK run: pass every message ``query()`` yielded (assistant messages and
    the result message; others are ignored). SDK objects and stream-json dicts both work.
    ``session`` overrides the run's own session id."""
    seen = list(messages)
    calls, result, source = agent_calls(seen)
    session = session or run_session(seen, result)
    meta = _metadata(metadata, result, prefer_sdk_cost)
    sdk = _sdk_micros(result)
    reported: list[int | None] = [None] * len(calls)
    if prefer_sdk_cost and sdk is not None and calls:
        prices = [client.cost(model=c.model, usage=c.usage, org=org).cost_micros for c in calls]
        reported = list(shares(sdk, prices))
    records = [
        client.record_usage(
            org=org,
            model=call.model,
            usage=call.usage,
            user=user,
            feature=feature,
            record_id=call.record_id,
            metadata=meta,
            cost_micros=share,
            session=session,
        )
        for call, share in zip(calls, reported, strict=True)
    ]
    return _summary(records, calls, result, source, prefer_sdk_cost)


async def arecord_agent_result(
    client: AsyncBudgetdClient,
    messages: Iterable[Any],
    *,
    org: str | None = None,
    user: str | None = None,
    feature: str | None = None,
    metadata: Mapping[str, str] | None = None,
    prefer_sdk_cost: bool = False,
    session: str | None = None,
) -> AgentRecord:
    """The asyncio twin of :func:`record_agent_result`."""
    seen = list(messages)
    calls, result, source = agent_calls(seen)
    session = session or run_session(seen, result)
    meta = _metadata(metadata, result, prefer_sdk_cost)
    sdk = _sdk_micros(result)
    reported: list[int | None] = [None] * len(calls)
    if prefer_sdk_cost and sdk is not None and calls:
        prices = [
            (await client.cost(model=c.model, usage=c.usage, org=org)).cost_micros for c in calls
        ]
        reported = list(shares(sdk, prices))
    records = [
        await client.record_usage(
            org=org,
            model=call.model,
            usage=call.usage,
            user=user,
            feature=feature,
            record_id=call.record_id,
            metadata=meta,
            cost_micros=share,
            session=session,
        )
        for call, share in zip(calls, reported, strict=True)
    ]
    return _summary(records, calls, result, source, prefer_sdk_cost)
