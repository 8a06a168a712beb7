"""The HTTP contract of DESIGN.md: status codes, problem+json types, fields and headers."""

from __future__ import annotations

from pathlib import Path

from budgetd.app import create_app
from budgetd.store.connect import embedded_store
from tests.api.conftest import Client, asgi_client, settings_for, write_policy
from tests.engine.conftest import ACME

BODY = {
    "org": "acme",
    "model": "claude-haiku-test",
    "input_tokens": 100,
    "max_tokens": 100,
    "user": "bob",
    "feature": "chat",
}
PROBLEM = "application/problem+json"


async def test_grant_carries_remaining_and_crossed_thresholds(acme_client: Client) -> None:
    # bob has $1/day; 100 input + 100,000 output tokens hold 500,100 µ$: crosses 50 %.
    r = await acme_client.post(
        "/v1/reservations?detail=scopes", json={**BODY, "max_tokens": 100_000}
    )
    assert r.status_code == 201
    body = r.json()
    assert body["held_micros"] == 500_100
    user = next(s for s in body["scopes"] if s["name"] == "user-day")
    assert user["remaining"] == 1_000_000 - 500_100
    assert [(w["kind"], w["name"], w["threshold_pct"]) for w in body["warnings"]] == [
        ("threshold", "user-day", 50)
    ]


async def test_denial_is_429_problem_with_retry_after(acme_client: Client) -> None:
    await acme_client.post("/v1/reservations", json={**BODY, "max_tokens": 150_000})
    r = await acme_client.post("/v1/reservations", json={**BODY, "max_tokens": 150_000})
    assert r.status_code == 429
    assert r.headers["content-type"].startswith(PROBLEM)
    assert int(r.headers["retry-after"]) > 0
    problem = r.json()
    assert problem["type"].endswith("/budget-exceeded")
    scope = problem["scopes"][0]
    assert (scope["kind"], scope["name"], scope["scope"], scope["entity"]) == (
        "budget",
        "user-day",
        "user",
        "bob",
    )
    assert {"limit", "spent_micros", "held_micros", "period_end"} <= scope.keys()


async def test_validation_error_is_422_naming_the_field(acme_client: Client) -> None:
    r = await acme_client.post("/v1/reservations", json={**BODY, "max_tokens": "lots"})
    assert r.status_code == 422
    assert r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["field"] == "max_tokens"
    assert r.json()["type"].endswith("/invalid-request")
    missing = await acme_client.post("/v1/reservations", json={"org": "acme"})
    assert missing.status_code == 422
    assert missing.json()["field"] == "model"
    unknown = await acme_client.post("/v1/reservations", json={**BODY, "colour": "red"})
    assert (unknown.status_code, unknown.json()["field"]) == (422, "colour")
    nested = await acme_client.post(
        "/v1/reservations/r1/commit?org=acme", json={"usage": {"input_tokens": "many"}}
    )
    assert (nested.status_code, nested.json()["field"]) == (422, "usage.input_tokens")


async def test_malformed_json_is_400_with_a_stable_type(acme_client: Client) -> None:
    r = await acme_client.post(
        "/v1/reservations", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert r.headers["content-type"].startswith(PROBLEM)
    assert (r.json()["type"], r.json()["title"]) == (
        "https://budgetd.dev/problems/malformed-request",
        "Malformed request",
    )


async def test_unknown_model_is_422_and_charges_nothing(acme_client: Client) -> None:
    r = await acme_client.post("/v1/reservations", json={**BODY, "model": "claude-nope-9"})
    assert r.status_code == 422
    assert r.json()["type"].endswith("/unknown-model")
    assert "claude-nope-9" in r.json()["detail"]
    cost = await acme_client.post("/v1/cost", json={"model": "gpt-4", "usage": {}})
    assert cost.status_code == 422


async def test_missing_reservation_is_404_and_conflict_is_409(acme_client: Client) -> None:
    missing = await acme_client.post(
        "/v1/reservations/nope/commit?org=acme", json={"usage": {}, "model": "claude-haiku-test"}
    )
    assert missing.status_code == 404
    assert missing.json()["type"].endswith("/reservation-not-found")
    await acme_client.post("/v1/reservations", json={**BODY, "reservation_id": "r1"})
    again = await acme_client.post("/v1/reservations", json={**BODY, "reservation_id": "r1"})
    assert again.status_code == 201 and again.json()["replayed"] is True
    clash = await acme_client.post(
        "/v1/reservations", json={**BODY, "reservation_id": "r1", "max_tokens": 5}
    )
    assert clash.status_code == 409
    assert clash.json()["type"].endswith("/conflict")


async def test_unknown_org_is_404(acme_client: Client) -> None:
    r = await acme_client.post("/v1/reservations", json={**BODY, "org": "nobody"})
    assert r.status_code == 404
    assert r.json()["type"].endswith("/unknown-org")


async def test_usage_records_once_per_record_id(acme_client: Client) -> None:
    body = {
        "org": "acme",
        "model": "claude-haiku-test",
        "user": "bob",
        "record_id": "batch-1",
        "usage": {"input_tokens": 1000, "output_tokens": 10, "service_tier": "batch"},
    }
    first = await acme_client.post("/v1/usage", json=body)
    second = await acme_client.post("/v1/usage", json=body)
    assert first.status_code == second.status_code == 201
    assert first.json()["cost_micros"] == 525  # (1,000 + 50) µ$ at half price
    assert second.json()["replayed"] is True
    view = await acme_client.get("/v1/budgets?org=acme&user=bob")
    user = next(s for s in view.json()["scopes"] if s["name"] == "user-day")
    assert user["spent_micros"] == 525


async def test_cost_endpoint_breakdown(acme_client: Client) -> None:
    r = await acme_client.post(
        "/v1/cost",
        json={
            "model": "claude-haiku-test",
            "usage": {"input_tokens": 10, "output_tokens": 2, "cache_read_input_tokens": 100},
        },
    )
    assert r.status_code == 200
    body = r.json()
    assert body["cost_micros"] == 10 + 10 + 10  # 10×1 + 2×5 + 100×0.1
    assert {line["kind"]: line["picos"] for line in body["breakdown"]}["cache_read"] == 10_000_000


async def test_operational_endpoints(acme_client: Client) -> None:
    assert (await acme_client.get("/healthz")).status_code == 200
    ready = await acme_client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    schema = await acme_client.get("/schema/openapi.json")
    assert "/v1/reservations" in schema.json()["paths"]
    await acme_client.post("/v1/reservations", json=BODY)
    metrics = (await acme_client.get("/metrics")).text
    assert 'budgetd_decisions_total{outcome="granted"} 1.0' in metrics
    assert "bob" not in metrics  # no user ids in labels


async def test_invalid_policy_reload_keeps_last_good(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    write_policy(directory, ACME)
    app = create_app(settings_for(directory), store=embedded_store())
    engine = app.state.engine
    async with asgi_client(app) as client:
        write_policy(directory, ACME.replace("limit_usd: 1,", "limit_usd: -1,"))
        await app.state.jobs.reload_policy()
        assert engine.registry.last_status.ok is False
        assert "must not be negative" in engine.registry.last_status.errors[0]
        r = await client.post("/v1/reservations", json=BODY)
        assert r.status_code == 201  # the last good policy still enforces
        ready = await client.get("/readyz")
        assert ready.json()["policy"]["last_reload_ok"] is False
        assert "budgetd_config_load_error_total 1.0" in (await client.get("/metrics")).text


async def test_usage_with_a_reported_cost_charges_it_and_keeps_the_price(
    acme_client: Client,
) -> None:
    body = {
        "org": "acme",
        "model": "claude-haiku-test",
        "user": "bob",
        "record_id": "agent-1",
        "usage": {"input_tokens": 1000},
        "cost_micros": 1234,
    }
    r = await acme_client.post("/v1/usage", json=body)
    assert r.status_code == 201
    assert (r.json()["cost_micros"], r.json()["priced_micros"]) == (1234, 1000)
    view = await acme_client.get("/v1/budgets?org=acme&user=bob")
    user = next(s for s in view.json()["scopes"] if s["name"] == "user-day")
    assert user["spent_micros"] == 1234
    negative = await acme_client.post("/v1/usage", json={**body, "cost_micros": -1})
    assert (negative.status_code, negative.json()["field"]) == (422, "cost_micros")
