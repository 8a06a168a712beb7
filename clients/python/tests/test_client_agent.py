"""Agent SDK ingestion: de-duplication by message id, per-model records, idempotency."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from budgetd_client import AsyncBudgetdClient, arecord_agent_result
from budgetd_client.agent import shares

from conftest import HAIKU, Recorder

SONNET = "claude-sonnet-test"


@dataclass
class AssistantMessage:
    """Shaped like claude_agent_sdk.AssistantMessage (the SDK itself is not needed here)."""

    content: list[Any]
    model: str
    message_id: str | None = None
    usage: dict[str, Any] | None = None
    session_id: str | None = None


@dataclass
class ResultMessage:
    session_id: str
    total_cost_usd: float | None = None
    usage: dict[str, Any] | None = None
    model_usage: dict[str, Any] = field(default_factory=dict)


def run() -> list[Any]:
    step1 = {"input_tokens": 100, "cache_read_input_tokens": 10_000, "output_tokens": 10}
    step1_final = {**step1, "output_tokens": 50}
    step2 = {"input_tokens": 2000, "cache_creation_input_tokens": 1000, "output_tokens": 300}
    return [
        # Parallel tool calls: three messages of one call, output counts growing.
        AssistantMessage([], HAIKU, "msg_1", step1),
        AssistantMessage([], HAIKU, "msg_1", step1_final),
        AssistantMessage([], HAIKU, "msg_1", step1),
        {"type": "user", "message": {"content": "tool result"}},
        # stream-json shape for the next call, on another model.
        {"type": "assistant", "message": {"id": "msg_2", "model": SONNET, "usage": step2}},
        ResultMessage("sess-1", total_cost_usd=0.0123, model_usage={}),
    ]


# haiku: 100×1 + 10000×0.1 + 50×5 = 1350; sonnet: 2000×3 + 1000×3.75 + 300×15 = 14250.
HAIKU_COST, SONNET_COST = 1350, 14250


async def test_records_each_call_once_at_the_exact_price(budgetd: AsyncBudgetdClient) -> None:
    result = await arecord_agent_result(budgetd, run(), org="acme", user="alice", feature="agent")
    assert result.source == "assistant_messages"
    assert [r.record_id for r in result.records] == ["agent.msg_1", "agent.msg_2"]
    assert result.by_model == {HAIKU: HAIKU_COST, SONNET: SONNET_COST}
    assert result.charged_micros == result.cost_micros == HAIKU_COST + SONNET_COST
    assert result.sdk_cost_micros == 12_300
    state = (await budgetd.budgets(org="acme", user="alice")).budget("user-day")
    assert state.spent_micros == HAIKU_COST + SONNET_COST

    again = await arecord_agent_result(budgetd, run(), org="acme", user="alice", feature="agent")
    assert all(r.replayed for r in again.records)
    state = (await budgetd.budgets(org="acme", user="alice")).budget("user-day")
    assert state.spent_micros == HAIKU_COST + SONNET_COST


async def test_sdk_cost_and_model_usage_fallback(budgetd: AsyncBudgetdClient) -> None:
    result_only = [
        ResultMessage(
            "sess-2",
            total_cost_usd=0.01,
            model_usage={HAIKU: {"inputTokens": 1000, "outputTokens": 200, "costUSD": 0.01}},
        )
    ]
    result = await arecord_agent_result(budgetd, result_only, org="acme", prefer_sdk_cost=True)
    assert result.source == "model_usage"
    # The SDK's figure is charged; budgetd's own price of the same tokens is kept beside it.
    assert result.charged_micros == result.cost_micros == result.sdk_cost_micros == 10_000
    assert [r.priced_micros for r in result.records] == [2000]


async def test_every_record_carries_the_runs_session(
    budgetd: AsyncBudgetdClient, recorder: Recorder
) -> None:
    await arecord_agent_result(budgetd, run(), org="acme")
    assert [b["session"] for b in recorder.bodies("/v1/usage")] == ["sess-1", "sess-1"]
    assert all("metadata" not in b for b in recorder.bodies("/v1/usage"))
    # The caller's session wins; one that is not a budgetd id is hashed, the same way each time.
    own = [AssistantMessage([], HAIKU, "msg_8", {"input_tokens": 1}, "sess-8")]
    await arecord_agent_result(budgetd, own, org="acme", session="run-7")
    odd = [AssistantMessage([], HAIKU, "msg_9", {"input_tokens": 1}, "a session id with spaces")]
    await arecord_agent_result(budgetd, odd, org="acme")
    replay = await arecord_agent_result(budgetd, odd, org="acme")
    assert replay.records[0].replayed
    sessions = [b["session"] for b in recorder.bodies("/v1/usage")][2:]
    assert sessions[0] == "run-7"
    assert sessions[1] == sessions[2] and sessions[1].startswith("h") and len(sessions[1]) == 41


def test_sdk_total_is_split_in_proportion_to_the_prices_exactly() -> None:
    assert shares(10, [1, 1, 1]) == [4, 3, 3]
    assert sum(shares(12_345, [700, 2_000, 1])) == 12_345
    assert shares(7, [0, 0]) == [4, 3]
    assert shares(0, [5, 5]) == [0, 0]
    assert shares(5, []) == []
