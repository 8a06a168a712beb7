"""Session budgets through the gateway (issue 14), with the real ``anthropic`` SDK: the
``x-budgetd-session`` header names the run, and a run over its budget is stopped with an error
no SDK retries (waiting does not free a session)."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from tests.gateway.conftest import MODEL, Ledger, Setup


def ask(text: str) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 1000, "messages": [{"role": "user", "content": text}]}


async def test_a_run_over_its_session_budget_is_stopped(
    gateway_setup: Setup, ledger: Ledger
) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=gateway_setup.gateway.url,
        api_key=gateway_setup.keys.app,
        max_retries=2,
        default_headers={"x-budgetd-session": "gw-run-1"},
    ) as client:
        # Spend the run's $0.05 past its limit (the real usage is charged, whatever it held).
        await client.messages.create(**ask("spend [fake:out=12000]"))
        with pytest.raises(anthropic.BadRequestError) as stopped:
            await client.messages.create(**ask("more"))
        assert "session budget 'per-run'" in stopped.value.message
        body: Any = stopped.value.body
        assert body["error"]["type"] == "invalid_request_error"
        # Another run of the same caller has its own budget.
        await client.messages.create(**ask("hi"), extra_headers={"x-budgetd-session": "gw-run-2"})
    view = await ledger.engine.budgets("gw-test", None, None, None, session="gw-run-1")
    (run,) = [s for s in view.scopes if s.name == "per-run"]
    assert run.entity == "gw-run-1" and run.spent_micros is not None
    assert run.spent_micros > 50_000
