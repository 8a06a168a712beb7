"""Tags (issue 14): free-form tags on a call, tag-scope budgets per matching tag, and a clear
422 beyond the documented number or pattern."""

from __future__ import annotations

from budgetd.contract import MAX_TAGS
from budgetd.store.base import Store
from tests.api.conftest import ClientFactory

POLICY = """
org: acme
timezone: UTC
budgets:
  - {name: per-project, scope: tag, match: "project:*", limit_usd: 25, period: day,
     overrides: {"project:tiny": 5}}
"""
# claude-opus-test: $5 per million input tokens (tests/data/pricing.yaml): a little over $10.
BIG = {"org": "acme", "model": "claude-opus-test", "input_tokens": 2_000_000, "max_tokens": 1}


async def test_each_matching_tag_is_a_budget(client_for: ClientFactory, store: Store) -> None:
    async with client_for(POLICY, store=store) as client:
        tagged = {**BIG, "tags": ["project:search", "env:staging"]}
        first = await client.post("/v1/reservations?detail=scopes", json=tagged)
        assert first.status_code == 201, first.text
        assert [(s["scope"], s["entity"]) for s in first.json()["scopes"]] == [
            ("tag", "project:search")
        ]
        assert (await client.post("/v1/reservations", json=tagged)).status_code == 201
        denied = await client.post("/v1/reservations", json=tagged)
        assert denied.status_code == 429
        assert [s["entity"] for s in denied.json()["scopes"]] == ["project:search"]
        # Another project, and untagged calls, still have room; the override applies.
        other = {**BIG, "tags": ["project:chat"]}
        assert (await client.post("/v1/reservations", json=other)).status_code == 201
        assert (await client.post("/v1/reservations", json=BIG)).status_code == 201
        tiny = await client.post("/v1/reservations", json={**BIG, "tags": ["project:tiny"]})
        assert [s["reason"] for s in tiny.json()["scopes"]] == ["larger_than_limit"]


async def test_too_many_or_malformed_tags_are_refused(
    client_for: ClientFactory, store: Store
) -> None:
    async with client_for(POLICY, store=store) as client:
        many = [f"t{i}" for i in range(MAX_TAGS + 1)]
        answer = await client.post("/v1/reservations", json={**BIG, "tags": many})
        assert answer.status_code == 422
        assert "tags" in answer.text and str(MAX_TAGS) in answer.text
        bad = await client.post("/v1/reservations", json={**BIG, "tags": ["Project Search"]})
        assert bad.status_code == 422 and "tags" in bad.text
        usage = {"org": "acme", "model": "claude-opus-test", "usage": {"input_tokens": 1}}
        refused = await client.post("/v1/usage", json={**usage, "tags": many})
        assert refused.status_code == 422


async def test_the_budgets_view_shows_the_tags_asked_about(
    client_for: ClientFactory, store: Store
) -> None:
    async with client_for(POLICY, store=store) as client:
        tagged = {**BIG, "tags": ["project:search"]}
        assert (await client.post("/v1/reservations", json=tagged)).status_code == 201
        view = await client.get(
            "/v1/budgets", params={"org": "acme", "tags": "project:search,env:staging"}
        )
        assert view.status_code == 200, view.text
        assert [(s["name"], s["entity"]) for s in view.json()["scopes"]] == [
            ("per-project", "project:search")
        ]
        assert view.json()["scopes"][0]["held_micros"] > 10_000_000
        many = ",".join(f"t{i}" for i in range(MAX_TAGS + 1))
        for bad in (many, "Project", "a,,b"):
            refused = await client.get("/v1/budgets", params={"org": "acme", "tags": bad})
            assert refused.status_code == 422, bad
            assert refused.json()["field"] == "tags"
