"""The service restarts mid-load (a new app instance on the same Redis; the old one's in-flight
requests are cut off, answered or not). Holds nobody will commit expire after their lease and the
sweep, so nothing stays held; every commit is retried with the same id after the restart, and the
counters and the ledger count each reservation exactly once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from budgetd.store import keys
from budgetd.store.connect import redis_store
from tests.api.conftest import Client, ClientFactory
from tests.servers import RedisServer, start_redis

POLICY = """
org: acme
timezone: UTC
budgets:
  - {name: org-day, scope: org, limit_usd: 100, period: day}
  - {name: user-day, scope: user, limit_usd: 10, period: day}
"""
LEASE_S = 1
COST = 550  # claude-haiku-test: 50 input × 1 µ$ + 100 output × 5 µ$
USAGE = {"usage": {"input_tokens": 50, "output_tokens": 100}}
WORKERS = 16


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    made = start_redis(tmp_path / "redis")
    yield made
    made.stop()


def _reserve_body(rid: str, user: str) -> dict[str, object]:
    return {
        "org": "acme",
        "model": "claude-haiku-test",
        "input_tokens": 100,
        "max_tokens": 200,
        "user": user,
        "reservation_id": rid,
        "ttl_s": LEASE_S,
    }


async def _load(client: Client, worker: int, tried: set[str], acked: set[str]) -> None:
    """reserve → commit forever; every 4th reservation is abandoned (never committed)."""
    n = 0
    while True:
        rid = f"w{worker}-{n}"
        n += 1
        r = await client.post("/v1/reservations", json=_reserve_body(rid, f"u{worker}"))
        assert r.status_code == 201, r.text
        if n % 4 == 0:
            continue
        tried.add(rid)  # from here on the commit may have reached Redis, answered or not
        r = await client.post(f"/v1/reservations/{rid}/commit?org=acme", json=USAGE)
        assert r.status_code == 200, r.text
        acked.add(rid)


async def _budgets(client: Client) -> dict[str, tuple[int, int]]:
    r = await client.get("/v1/budgets?org=acme")
    assert r.status_code == 200, r.text
    return {
        s["name"]: (s["spent_micros"], s["held_micros"])
        for s in r.json()["scopes"]
        if s["kind"] == "budget"
    }


async def test_restart_mid_load_leaks_no_hold_and_counts_no_commit_twice(
    client_for: ClientFactory, server: RedisServer
) -> None:
    tried: set[str] = set()
    acked: set[str] = set()
    async with client_for(POLICY, store=redis_store(server.url, timeout_s=2.0)) as old:
        workers = [asyncio.create_task(_load(old, w, tried, acked)) for w in range(WORKERS)]
        # Load until enough commits went through and, at this very step, some commits are in
        # flight: the cut below follows with no await in between, so they stay unacknowledged.
        deadline = time.monotonic() + 10
        while len(acked) < 60 or not tried - acked:
            assert time.monotonic() < deadline, (len(tried), len(acked))
            await asyncio.sleep(0.01)
        # The crash: every request in flight is cut off wherever it is (before its script was
        # sent, while Redis ran it, or after, with the answer never read).
        for task in workers:
            task.cancel()
        for outcome in await asyncio.gather(*workers, return_exceptions=True):
            assert isinstance(outcome, asyncio.CancelledError), outcome
    assert len(acked) > 50 and tried - acked, (len(tried), len(acked))

    async with client_for(
        POLICY, store=redis_store(server.url, timeout_s=2.0), sweep_interval_s=0.2
    ) as new:
        # The client retries every commit it sent, acknowledged or not, with the same id.
        replayed: Counter[bool] = Counter()
        for rid in sorted(tried):
            r = await new.post(f"/v1/reservations/{rid}/commit?org=acme", json=USAGE)
            assert r.status_code == 200, r.text
            assert r.json()["cost_micros"] == COST
            replayed[r.json()["replayed"]] += 1
        assert replayed[True] >= len(acked)  # the acknowledged ones were settled already

        # Holds nobody commits (abandoned, or whose reserve answer was lost) expire after their
        # lease, on Redis time, and the sweep of the new instance reclaims them.
        deadline = time.monotonic() + LEASE_S + 5
        while any(held for _, held in (await _budgets(new)).values()):
            assert time.monotonic() < deadline, await _budgets(new)
            await asyncio.sleep(0.1)
        view = await _budgets(new)
        assert view["org-day"] == (COST * len(tried), 0)

    async with aioredis.Redis.from_url(server.url, decode_responses=True) as plain:
        raw: Any = await plain.xrange(keys.ledger("acme"))
    entries: list[tuple[str, dict[str, str]]] = raw
    per_id = Counter(fields["reservation_id"] for _, fields in entries)
    assert set(per_id) == tried and set(per_id.values()) == {1}
    print(
        f"\nrestart: {len(tried)} commits sent ({len(acked)} acknowledged before the cut), "
        f"{replayed[False]} settled only by the retry, {len(entries)} ledger entries"
    )
