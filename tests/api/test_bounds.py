"""Bounds as part of the contract (issue 9, items 1 and 2): every number a caller sends has a
documented maximum, checked before pricing, and one call's debt on a token bucket is bounded."""

from __future__ import annotations

import httpx
import pytest

from budgetd import bounds
from budgetd.store.base import Store
from budgetd.store.scripts import source
from tests.api.conftest import Client, ClientFactory

BODY = {
    "org": "acme",
    "model": "claude-haiku-test",
    "input_tokens": 100,
    "max_tokens": 100,
    "user": "bob",
    "feature": "chat",
}
PROBLEM = "application/problem+json"


def assert_invalid(r: httpx.Response, field: str) -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    problem = r.json()
    assert problem["type"].endswith("/invalid-request")
    assert problem["field"] == field, problem


async def spends(client: Client) -> list[int]:
    r = await client.get("/v1/budgets", params={"org": "acme", "user": "bob", "feature": "chat"})
    assert r.status_code == 200
    return [s["spent_micros"] for s in r.json()["scopes"] if s["kind"] == "budget"]


@pytest.mark.parametrize(
    ("usage", "field"),
    [
        ({"input_tokens": 99999999999999999999999}, "usage.input_tokens"),
        ({"output_tokens": 2 * 10**18}, "usage.output_tokens"),
        ({"cache_read_input_tokens": bounds.MAX_TOKENS + 1}, "usage.cache_read_input_tokens"),
        (
            {"cache_creation": {"ephemeral_1h_input_tokens": bounds.MAX_TOKENS + 1}},
            "usage.cache_creation.ephemeral_1h_input_tokens",
        ),
        (
            {"server_tool_use": {"web_search_requests": bounds.MAX_WEB_SEARCHES + 1}},
            "usage.server_tool_use.web_search_requests",
        ),
    ],
)
async def test_usage_counts_past_their_maximum_are_refused(
    acme_client: Client, usage: dict[str, object], field: str
) -> None:
    r = await acme_client.post(
        "/v1/usage", json={"org": "acme", "model": "claude-haiku-test", "usage": usage}
    )
    assert_invalid(r, field)
    grant = await acme_client.post("/v1/reservations", json=BODY)
    assert grant.status_code == 201
    rid = grant.json()["reservation_id"]
    commit = await acme_client.post(
        f"/v1/reservations/{rid}/commit", params={"org": "acme"}, json={"usage": usage}
    )
    assert_invalid(commit, field)
    assert await spends(acme_client) == [0, 0, 0]


async def test_a_reported_cost_past_its_maximum_is_refused(acme_client: Client) -> None:
    for cost in (2**63, bounds.MAX_CALL_MICROS + 1):
        r = await acme_client.post(
            "/v1/usage",
            json={
                "org": "acme",
                "model": "claude-haiku-test",
                "usage": {"input_tokens": 1},
                "cost_micros": cost,
            },
        )
        assert_invalid(r, "cost_micros")
    assert await spends(acme_client) == [0, 0, 0]
    at_most = await acme_client.post(
        "/v1/usage",
        json={
            "org": "acme",
            "model": "claude-haiku-test",
            "usage": {"input_tokens": 1},
            "cost_micros": bounds.MAX_CALL_MICROS,
            "user": "bob",
            "feature": "chat",
        },
    )
    assert at_most.status_code == 201
    assert await spends(acme_client) == [bounds.MAX_CALL_MICROS] * 3


async def test_ttl_longer_than_the_policys_hold_ttl_is_refused(acme_client: Client) -> None:
    # ACME's hold_ttl_s is 60.
    r = await acme_client.post("/v1/reservations", json={**BODY, "ttl_s": 61})
    assert_invalid(r, "ttl_s")
    ok = await acme_client.post("/v1/reservations", json={**BODY, "ttl_s": 60})
    assert ok.status_code == 201


async def test_the_largest_call_never_wraps_a_counter(acme_client: Client) -> None:
    # Every token count at its maximum, on the dearest options: a large positive spend.
    usage = {
        "input_tokens": bounds.MAX_TOKENS,
        "output_tokens": bounds.MAX_TOKENS,
        "cache_creation_input_tokens": bounds.MAX_TOKENS,
        "cache_read_input_tokens": bounds.MAX_TOKENS,
        "server_tool_use": {"web_search_requests": bounds.MAX_WEB_SEARCHES},
    }
    r = await acme_client.post(
        "/v1/usage",
        json={
            "org": "acme",
            "model": "claude-opus-test",
            "usage": usage,
            "user": "bob",
            "feature": "chat",
        },
    )
    assert r.status_code == 201, r.text
    cost = r.json()["cost_micros"]
    assert 0 < cost <= bounds.MAX_CALL_MICROS
    assert await spends(acme_client) == [cost] * 3


RATED = """
org: acme
timezone: UTC
defaults: {hold_ttl_s: 60}
rate_limits:
  - {name: itpm, scope: org, input_tokens_per_minute: 1000000}
"""


async def test_one_huge_commit_cannot_lock_the_org_for_more_than_a_minute(
    client_for: ClientFactory, store: Store
) -> None:
    async with client_for(RATED, store=store) as client:
        grant = await client.post(
            "/v1/reservations", json={**BODY, "input_tokens": 1000, "max_tokens": 10}
        )
        assert grant.status_code == 201
        rid = grant.json()["reservation_id"]
        usage = {"input_tokens": bounds.MAX_TOKENS, "cache_creation_input_tokens": 10**8}
        commit = await client.post(
            f"/v1/reservations/{rid}/commit", params={"org": "acme"}, json={"usage": usage}
        )
        assert commit.status_code == 200, commit.text
        denied = await client.post("/v1/reservations", json={**BODY, "input_tokens": 1000})
        assert denied.status_code == 429
        # At most one bucket's capacity of debt: refilled within a minute, plus this call's need.
        assert int(denied.headers["retry-after"]) <= 61
        status = await client.get("/v1/budgets", params={"org": "acme"})
        (rate,) = status.json()["scopes"]
        assert rate["remaining"] == 0


def test_the_scripts_bound_is_bounds_py() -> None:
    # lib.lua checks counters against its own copy of the bound; they must agree.
    assert f"local MAX_AMOUNT = {bounds.MAX_COUNTER_MICROS}\n" in source("commit")
