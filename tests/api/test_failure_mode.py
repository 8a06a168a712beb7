"""Redis unreachable: fail-closed budgets answer 503 within the timeout, fail-open ones are
granted without a hold (and their commit still records), readiness goes down."""

from __future__ import annotations

import time

from budgetd.store.connect import embedded_store, redis_store
from tests.api.conftest import ClientFactory
from tests.servers import free_port

CLOSED = """
org: acme
timezone: UTC
budgets:
  - {name: org-day, scope: org, limit_usd: 10, period: day}
"""
OPEN = CLOSED.replace("period: day}", "period: day, failure: fail_open}")
BODY = {"org": "acme", "model": "claude-haiku-test", "input_tokens": 10, "max_tokens": 10}


def _dead_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there once the socket closes


async def test_fail_closed_is_503_within_the_timeout(client_for: ClientFactory) -> None:
    store = redis_store(_dead_url(), timeout_s=0.2)
    async with client_for(CLOSED, store=store) as client:
        started = time.monotonic()
        r = await client.post("/v1/reservations", json=BODY)
        assert time.monotonic() - started < 2
        assert r.status_code == 503
        assert r.json()["type"].endswith("/store-unavailable")
        assert "org-day" in r.json()["detail"]
        assert r.headers["retry-after"] == "1"
        # Readiness is "this pod can decide", and it just did: store health is in the body.
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["store"]["ok"] is False
        metrics = (await client.get("/metrics")).text
        assert "budgetd_store_up 0.0" in metrics


async def test_fail_open_grants_degraded_and_commit_records_later(
    client_for: ClientFactory,
) -> None:
    store = redis_store(_dead_url(), timeout_s=0.2)
    async with client_for(OPEN, store=store) as client:
        r = await client.post("/v1/reservations", json={**BODY, "user": "bob"})
        assert r.status_code == 201
        grant = r.json()
        assert grant["degraded"] is True and grant["held_micros"] == 0
    # Redis is back (here: another store). The degraded id still lets the commit record spend.
    async with client_for(OPEN, store=embedded_store()) as client:
        rid = grant["reservation_id"]
        done = await client.post(
            f"/v1/reservations/{rid}/commit?org=acme", json={"usage": {"input_tokens": 7}}
        )
        assert done.status_code == 200, done.text
        assert done.json()["cost_micros"] == 7
        view = await client.get("/v1/budgets?org=acme")
        assert view.json()["scopes"][0]["spent_micros"] == 7
