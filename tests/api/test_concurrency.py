"""1,000 concurrent reserves against one budget: exactly ⌊B/c⌋ granted, Σ held ≤ B at every
moment, and after the commits spent equals the sum of committed costs, to the micro."""

from __future__ import annotations

import asyncio
import random

import redis.asyncio as aioredis

from budgetd.store import keys
from budgetd.store.connect import redis_store
from budgetd.store.scripted import ScriptStore
from tests.api.conftest import Client, ClientFactory

# claude-haiku-test: 1 µ$ per input token, 5 µ$ per output token.
# Each reserve: 100 input + 200 output → c = 1,100 µ$. Budget B = $0.1 = 100,000 µ$ → 90 fit.
POLICY = """
org: acme
timezone: UTC
budgets:
  - {name: org-day, scope: org, limit_usd: 0.1, period: day}
"""
COST, BUDGET, CALLS, IN_FLIGHT = 1_100, 100_000, 1_000, 64
BODY = {"org": "acme", "model": "claude-haiku-test", "input_tokens": 100, "max_tokens": 200}


async def _fire(clients: list[Client], calls: int) -> list[str]:
    """Fire ``calls`` reserves spread over ``clients``; return the granted reservation ids."""
    gate = asyncio.Semaphore(IN_FLIGHT)
    granted: list[str] = []

    async def one(i: int) -> None:
        async with gate:
            r = await clients[i % len(clients)].post("/v1/reservations", json=BODY)
            assert r.status_code in (201, 429), r.text
            if r.status_code == 201:
                granted.append(r.json()["reservation_id"])

    await asyncio.gather(*(one(i) for i in range(calls)))
    return granted


async def _watch_held(url: str, stop: asyncio.Event, peaks: list[int]) -> None:
    """Sample Σ spent + held of the budget counter while the reserves run."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    pattern = keys.tag("acme") + ":c:*"
    field = keys.budget_field("org-day", "acme")
    try:
        while not stop.is_set():
            for key in await client.keys(pattern):
                values = await client.hmget(key, [field + "|s", field + "|h"])
                if any(v is not None for v in values):
                    peaks.append(sum(int(v or 0) for v in values))
            await asyncio.sleep(0)
    finally:
        await client.aclose()


async def _commit_all(client: Client, ids: list[str]) -> int:
    total = 0
    for rid in ids:
        actual = {"input_tokens": random.randint(0, 100), "output_tokens": random.randint(0, 200)}
        r = await client.post(f"/v1/reservations/{rid}/commit?org=acme", json={"usage": actual})
        assert r.status_code == 200, r.text
        assert r.json()["cost_micros"] == actual["input_tokens"] + 5 * actual["output_tokens"]
        total += r.json()["cost_micros"]
    return total


async def _spent_held(client: Client) -> tuple[int, int]:
    r = await client.get("/v1/budgets?org=acme")
    scope = r.json()["scopes"][0]
    return scope["spent_micros"], scope["held_micros"]


async def test_one_instance_grants_exactly_floor_b_over_c(
    client_for: ClientFactory, store: ScriptStore
) -> None:
    async with client_for(POLICY, store=store) as client:
        granted = await _fire([client], CALLS)
        assert len(granted) == BUDGET // COST
        assert await _spent_held(client) == (0, len(granted) * COST)
        total = await _commit_all(client, granted)
        assert await _spent_held(client) == (total, 0)


async def test_two_instances_sharing_one_redis_never_overspend(
    client_for: ClientFactory, redis_url: str
) -> None:
    first, second = redis_store(redis_url, timeout_s=5), redis_store(redis_url, timeout_s=5)
    await first.client.flushdb()
    stop, samples = asyncio.Event(), []
    async with client_for(POLICY, store=first) as a, client_for(POLICY, store=second) as b:
        watcher = asyncio.create_task(_watch_held(redis_url, stop, samples))
        granted = await _fire([a, b], CALLS)
        stop.set()
        await watcher
        assert len(granted) == BUDGET // COST
        assert samples, "the watcher saw the counter"
        assert max(samples) <= BUDGET
        total = await _commit_all(b, granted)
        assert await _spent_held(a) == (total, 0)
