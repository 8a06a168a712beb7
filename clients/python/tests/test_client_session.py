"""Session budgets through the client (issue 14): the guard's session and the Agent SDK
ingestion's run id both count on the session's budget; a full session stops the run."""

from __future__ import annotations

from pathlib import Path

import anthropic
import pytest
from budgetd_client import AsyncBudgetdClient, BudgetExceeded, arecord_agent_result, guard, scope
from litestar import Litestar

from conftest import COST, HAIKU, FakeMessagesAPI, make_app

# The canned reply costs COST (6,500 µ$); a hold is 1,500 µ$ of output (300 tokens) plus the
# prompt: two calls fit in $0.014, a third does not.
SESSION_POLICY = """
org: acme
timezone: UTC
defaults:
  hold_ttl_s: 60
budgets:
  - {name: agent-run, scope: session, limit_usd: 0.014, period: session, idle: 30m}
"""
MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def app(tmp_path: Path) -> Litestar:
    return make_app(tmp_path, policy=SESSION_POLICY)


async def run_spent(budgetd: AsyncBudgetdClient, session: str) -> int | None:
    view = await budgetd.budgets(org="acme", session=session)
    return view.budget("agent-run").spent_micros


async def test_a_guarded_run_stops_at_its_session_budget(
    fake_api: FakeMessagesAPI, budgetd: AsyncBudgetdClient
) -> None:
    claude = guard(fake_api.async_client(), budgetd=budgetd, org="acme", session="run-1")
    await claude.messages.create(model=HAIKU, max_tokens=300, messages=MESSAGES)
    await claude.messages.create(model=HAIKU, max_tokens=300, messages=MESSAGES)
    assert await run_spent(budgetd, "run-1") == 2 * COST
    with pytest.raises(anthropic.RateLimitError) as denied:
        await claude.messages.create(model=HAIKU, max_tokens=300, messages=MESSAGES)
    assert isinstance(denied.value, BudgetExceeded)
    assert [(s.name, s.entity) for s in denied.value.scopes] == [("agent-run", "run-1")]
    assert denied.value.retry_after is None  # a full session does not free up by waiting
    assert len(fake_api.calls) == 2
    # Another run (a scope() block names it) has its own budget.
    with scope(session="run-2"):
        await claude.messages.create(model=HAIKU, max_tokens=300, messages=MESSAGES)
    assert await run_spent(budgetd, "run-2") == COST


async def test_an_agent_runs_records_count_on_its_session(budgetd: AsyncBudgetdClient) -> None:
    usage = {"input_tokens": 1000, "output_tokens": 200}  # 2,000 µ$ each
    messages = [
        {
            "type": "assistant",
            "session_id": "sdk-run",
            "message": {"id": f"m{i}", "model": HAIKU, "usage": usage},
        }
        for i in range(3)
    ]
    await arecord_agent_result(budgetd, messages, org="acme")
    assert await run_spent(budgetd, "sdk-run") == 6_000
