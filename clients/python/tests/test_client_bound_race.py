"""200 simultaneous calls on a budget for 20, against an upstream that bills more than chars/4.

Regression for issue 15: the chars ÷ 4 estimate held 17 tokens for a prompt billed far more, so
the budget granted more calls than it could pay for and ended past its limit. The fake
upstream bills the most a byte-level tokenizer can (one token per UTF-8 byte of every text)
plus the tool-use system prompt Anthropic documents (346 tokens): the worst a real count
reaches. Every hold must cover it, so at most 20 calls are granted and the budget is never
exceeded."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
from budgetd_client import AsyncBudgetdClient, BudgetExceeded, guard

from conftest import HAIKU, lifespan, make_app

SYSTEM = "You are a terse assistant for an online shop. Answer in one sentence. " * 10
PROMPT = "Wie viel kostet der Versand nach Zürich? 配送料はいくらですか🙂"  # 60 characters
TOOLS = [
    {
        "name": "shipping_quote",
        "description": "Quote shipping for a destination city and a parcel weight.",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "kg": {"type": "number"}},
        },
    }
]
OUTPUT = 100
CALLS = 200
AFFORDABLE = 20


def billed_input(body: dict[str, Any]) -> int:
    """One token per UTF-8 byte of the system prompt, the messages' text and the tool JSON,
    plus the documented tool-use system prompt."""
    texts = [body["system"], *(m["content"] for m in body["messages"])]
    texts += [json.dumps(t) for t in body.get("tools", [])]
    return sum(len(t.encode()) for t in texts) + 346


INPUT = billed_input({"system": SYSTEM, "messages": [{"content": PROMPT}], "tools": TOOLS})
COST = INPUT * 1 + OUTPUT * 5  # claude-haiku-test: $1 in, $5 out per MTok = micros per token
LIMIT = AFFORDABLE * COST


class SlowUpstream:
    """Answers no call until every one of the ``CALLS`` was either granted and sent here or
    denied: all reservations are in flight at once, as with 200 simultaneous users."""

    def __init__(self) -> None:
        self.arrived = 0
        self.denied = 0
        self.go = asyncio.Event()

    def check(self) -> None:
        if self.arrived + self.denied == CALLS:
            self.go.set()

    async def handler(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.arrived += 1
        self.check()
        await self.go.wait()
        usage = {"input_tokens": billed_input(body), "output_tokens": OUTPUT}
        return httpx2.Response(
            200,
            json={
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": HAIKU,
                "content": [{"type": "text", "text": "CHF 9."}],
                "stop_reason": "max_tokens",
                "stop_sequence": None,
                "usage": usage,
            },
        )


async def test_200_calls_on_a_budget_for_20_never_spend_past_it(tmp_path: Path) -> None:
    policy = f"""
org: acme
timezone: UTC
defaults: {{hold_ttl_s: 60}}
budgets:
  - {{name: org-day, scope: org, limit_usd: "{LIMIT / 1e6:.6f}", period: day}}
"""
    app = make_app(tmp_path, policy=policy)
    upstream = SlowUpstream()
    async with lifespan(app):
        budgetd = AsyncBudgetdClient(
            "http://budgetd", transport=httpx.ASGITransport(app=app), backoff_s=0.001
        )
        claude = guard(
            anthropic.AsyncAnthropic(
                api_key="sk-test",
                base_url="http://fake-anthropic",
                max_retries=0,
                http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(upstream.handler)),
            ),
            budgetd=budgetd,
            org="acme",
        )

        async def one() -> None:
            try:
                await claude.messages.create(
                    model=HAIKU,
                    max_tokens=OUTPUT,
                    system=SYSTEM,
                    tools=TOOLS,  # type: ignore[arg-type]
                    messages=[{"role": "user", "content": PROMPT}],
                )
            except BudgetExceeded:
                upstream.denied += 1
                upstream.check()

        await asyncio.gather(*(one() for _ in range(CALLS)))
        state = (await budgetd.budgets(org="acme")).budget("org-day")
        await budgetd.aclose()
    assert 0 < upstream.arrived <= AFFORDABLE
    assert state.held_micros == 0
    assert state.spent_micros == upstream.arrived * COST
    assert state.spent_micros <= LIMIT
