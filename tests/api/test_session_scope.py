"""Sessions (issue 14) over HTTP: a call names its session (an agent run, a conversation) in
``session``, on reserve, usage and the budgets view."""

from __future__ import annotations

from budgetd.store.base import Store
from tests.api.conftest import ClientFactory

POLICY = """
org: acme
timezone: UTC
budgets:
  - {name: org-month, scope: org, limit_usd: 1000, period: month}
"""
CALL = {"org": "acme", "model": "claude-haiku-test", "input_tokens": 100, "max_tokens": 10}


async def test_a_session_is_a_field_of_reserve_usage_and_budgets(
    client_for: ClientFactory, store: Store
) -> None:
    async with client_for(POLICY, store=store) as client:
        granted = await client.post("/v1/reservations", json={**CALL, "session": "run-1"})
        assert granted.status_code == 201, granted.text
        usage = {"org": "acme", "model": "claude-haiku-test", "usage": {"input_tokens": 1}}
        recorded = await client.post("/v1/usage", json={**usage, "session": "run-1"})
        assert recorded.status_code == 201, recorded.text
        view = await client.get("/v1/budgets", params={"org": "acme", "session": "run-1"})
        assert view.status_code == 200, view.text
        for bad in ("", "has spaces", "x" * 129):
            refused = await client.post("/v1/reservations", json={**CALL, "session": bad})
            assert refused.status_code == 422
            assert refused.json()["field"] == "session", refused.text
