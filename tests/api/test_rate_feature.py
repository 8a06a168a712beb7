"""A rate limit for one feature (issue 14): ``feature:`` filters the calls a rate limit counts,
with a glob on the call's feature, as it does for budgets."""

from __future__ import annotations

from budgetd.store.base import Store
from tests.api.conftest import ClientFactory

POLICY = """
org: acme
timezone: UTC
rate_limits:
  - {name: code-rpm, scope: user, feature: "claude-*", requests_per_minute: 1}
"""
CALL = {"org": "acme", "model": "claude-haiku-test", "input_tokens": 10, "max_tokens": 10}


async def test_a_rate_limit_counts_only_its_features_calls(
    client_for: ClientFactory, store: Store
) -> None:
    async with client_for(POLICY, store=store) as client:
        code = {**CALL, "user": "alice", "feature": "claude-code"}
        first = await client.post("/v1/reservations?detail=scopes", json=code)
        assert first.status_code == 201, first.text
        assert [(s["name"], s["entity"]) for s in first.json()["scopes"]] == [("code-rpm", "alice")]
        denied = await client.post("/v1/reservations?detail=scopes", json=code)
        assert denied.status_code == 429
        assert [s["name"] for s in denied.json()["scopes"]] == ["code-rpm"]
        # Her other features' calls, and calls naming no feature, are not counted.
        for other in ({**code, "feature": "chat"}, {**CALL, "user": "alice"}):
            answer = await client.post("/v1/reservations?detail=scopes", json=other)
            assert answer.status_code == 201, answer.text
            assert answer.json()["scopes"] == []
