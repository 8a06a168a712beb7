"""Key scope (issue 14): a budget per API key name, attributed to the caller's key by the HTTP
API itself; the request body cannot name another key."""

from __future__ import annotations

from pathlib import Path

from budgetd.app import create_app
from budgetd.store.base import Store
from tests.api.conftest import asgi_client, settings_for, write_keys, write_policy

POLICY = """
org: acme
timezone: UTC
budgets:
  - {name: org-month, scope: org, limit_usd: 1000, period: month}
  - {name: per-key, scope: key, limit_usd: 25, period: day, overrides: {batch-job: 5}}
"""
# claude-opus-test: $5 per million input tokens (tests/data/pricing.yaml): a little over $10.
BIG = {"org": "acme", "model": "claude-opus-test", "input_tokens": 2_000_000, "max_tokens": 1}


async def test_each_key_has_its_own_budget(tmp_path: Path, store: Store) -> None:
    directory = tmp_path / "policies"
    write_policy(directory, POLICY)
    keys = tmp_path / "keys.yaml"
    search, batch = write_keys(keys, ("acme", "app", "search-app"), ("acme", "app", "batch-job"))
    app = create_app(settings_for(directory, keys_file=keys), store=store)
    as_search = {"Authorization": f"Bearer {search}"}
    as_batch = {"Authorization": f"Bearer {batch}"}
    async with asgi_client(app) as client:
        first = await client.post("/v1/reservations?detail=scopes", json=BIG, headers=as_search)
        assert first.status_code == 201, first.text
        per_key = next(s for s in first.json()["scopes"] if s["name"] == "per-key")
        assert (per_key["scope"], per_key["entity"], per_key["limit"]) == (
            "key",
            "search-app",
            25_000_000,
        )
        assert (
            await client.post("/v1/reservations", json=BIG, headers=as_search)
        ).status_code == 201
        denied = await client.post("/v1/reservations", json=BIG, headers=as_search)
        assert denied.status_code == 429
        assert [(s["name"], s["entity"]) for s in denied.json()["scopes"]] == [
            ("per-key", "search-app")
        ]
        # Another key has its own counter (and its override): $5 cannot hold $10.
        other = await client.post("/v1/reservations", json=BIG, headers=as_batch)
        assert other.status_code == 429
        assert [(s["name"], s["entity"], s["reason"]) for s in other.json()["scopes"]] == [
            ("per-key", "batch-job", "larger_than_limit")
        ]
        # Usage without a reservation counts on the caller's key too, and the budgets view
        # shows the caller's key.
        small = {"org": "acme", "model": "claude-opus-test", "usage": {"input_tokens": 100_000}}
        assert (await client.post("/v1/usage", json=small, headers=as_batch)).status_code == 201
        view = await client.get("/v1/budgets", params={"org": "acme"}, headers=as_batch)
        mine = next(s for s in view.json()["scopes"] if s["name"] == "per-key")
        assert (mine["entity"], mine["spent_micros"]) == ("batch-job", 500_000)
        # A key name cannot be claimed in the body.
        spoof = await client.post("/v1/reservations", json={**BIG, "key": "x"}, headers=as_batch)
        assert spoof.status_code == 422
