"""The period's hard-limit event fires when the budget is exhausted, with true numbers (issue 9,
item 13): one reserve larger than the whole budget used to take the period's single hard-limit
event ("$0 of $1; calls are blocked"), and the real exhaustion later fired none."""

from __future__ import annotations

from typing import Any

from budgetd.store import keys
from budgetd.store.scripted import ScriptStore
from tests.api.conftest import ClientFactory

POLICY = """
org: acme
timezone: UTC
defaults: {thresholds_pct: [100]}
budgets:
  - {name: org-day, scope: org, limit_usd: 1, period: day}
"""
# claude-haiku-test: $5 per million output tokens.
DOLLAR = {"org": "acme", "model": "claude-haiku-test", "input_tokens": 0, "max_tokens": 200_000}


async def hard_limits(store: ScriptStore) -> list[dict[str, str]]:
    rows: Any = await store.client.xrange(keys.events("acme"))
    return [dict(fields) for _, fields in rows if fields.get("type") == "hard_limit"]


async def test_a_request_larger_than_the_budget_is_its_own_denial_not_the_exhaustion(
    client_for: ClientFactory, store: ScriptStore
) -> None:
    async with client_for(POLICY, store=store) as client:
        huge = await client.post("/v1/reservations", json={**DOLLAR, "max_tokens": 400_000})
        assert huge.status_code == 429
        assert await hard_limits(store) == []
        (scope,) = huge.json()["scopes"]
        assert scope["retry_after_s"] is None
        assert scope["reason"] == "larger_than_limit"

        grant = await client.post("/v1/reservations", json=DOLLAR)
        assert grant.status_code == 201
        rid = grant.json()["reservation_id"]
        done = await client.post(
            f"/v1/reservations/{rid}/commit",
            params={"org": "acme"},
            json={"usage": {"output_tokens": 200_000}},
        )
        assert done.status_code == 200
        full = await client.post("/v1/reservations", json={**DOLLAR, "max_tokens": 1000})
        assert full.status_code == 429
        assert full.json()["scopes"][0]["reason"] == "full"
        (event,) = await hard_limits(store)
        assert (event["used_micros"], event["limit_micros"], event["requested_micros"]) == (
            "1000000",
            "1000000",
            "5000",
        )
