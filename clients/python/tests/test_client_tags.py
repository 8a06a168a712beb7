"""Tags from the guard (issue 14): the guard's ``tags=``, a ``scope(tags=...)`` block and a
call's ``x-budgetd-tags`` header add up on the reservation, and never go upstream."""

from __future__ import annotations

from pathlib import Path

import anthropic
import pytest
from budgetd_client import AsyncBudgetdClient, guard, scope
from budgetd_client.core import Attribution, plan_call
from litestar import Litestar

from conftest import COST, HAIKU, POLICY, FakeMessagesAPI, Recorder, make_app

MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def app(tmp_path: Path) -> Litestar:
    """The conftest's policy with a budget per project tag."""
    per_project = (
        '  - {name: per-project, scope: tag, match: "project:*", limit_usd: 1, period: day}\n'
    )
    return make_app(tmp_path, policy=POLICY + per_project)


async def test_guard_scope_and_header_tags_add_up(
    budgetd: AsyncBudgetdClient, recorder: Recorder, fake_api: FakeMessagesAPI
) -> None:
    claude: anthropic.AsyncAnthropic = guard(
        fake_api.async_client(), budgetd=budgetd, org="acme", user="alice", tags=["env:prod"]
    )
    await claude.messages.create(model=HAIKU, max_tokens=10, messages=MESSAGES)
    with scope(tags=["project:search"]):
        await claude.messages.create(
            model=HAIKU,
            max_tokens=10,
            messages=MESSAGES,
            extra_headers={"x-budgetd-tags": "team:a, env:prod,"},
        )
    first, second = recorder.bodies("/v1/reservations")
    assert first["tags"] == ["env:prod"]
    assert second["tags"] == ["env:prod", "project:search", "team:a"]
    assert not any(k.startswith("x-budgetd") for k in fake_api.headers[1])
    view = await budgetd.budgets(org="acme", tags=["project:search", "project:other"])
    tagged = view.budget("per-project")
    assert (tagged.entity, tagged.spent_micros, tagged.held_micros) == ("project:search", COST, 0)


def test_the_core_reads_the_tags_header() -> None:
    body = b'{"model": "claude-haiku-test", "max_tokens": 5, "messages": []}'
    call = plan_call(
        "POST",
        "/v1/messages",
        [("x-budgetd-tags", "a,b"), ("content-type", "application/json")],
        body,
        Attribution(tags=("b", "c")),
    )
    assert call.reserves[0].tags == ("b", "c", "a")
    assert call.reserves[0].fields()["tags"] == ["b", "c", "a"]
    untagged = plan_call("POST", "/v1/messages", [], body)
    assert untagged.reserves[0].fields()["tags"] == []
