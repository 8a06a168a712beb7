"""Redis stops entirely (or hangs), then comes back on the same port: fail-closed budgets answer
503 within the timeout, fail-open ones are granted (degraded), readiness is 503; once Redis is
back, readiness recovers and reserves work again, without restarting the service.

"stop": the process exits, connections are refused at once. "freeze": SIGSTOP, so the socket
accepts and nothing answers; only the store's timeout bounds the wait."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from budgetd.store.connect import redis_store
from tests.api.conftest import ClientFactory
from tests.servers import RedisServer, start_redis

CLOSED = """
org: closed
timezone: UTC
budgets:
  - {name: org-day, scope: org, limit_usd: 10, period: day}
"""
OPEN = """
org: open
timezone: UTC
budgets:
  - {name: org-day, scope: org, limit_usd: 10, period: day, failure: fail_open}
"""
TIMEOUT_S = 0.3


def body(org: str) -> dict[str, object]:
    return {"org": org, "model": "claude-haiku-test", "input_tokens": 10, "max_tokens": 10}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    made = start_redis(tmp_path / "redis")
    yield made
    made.stop()


def _down(server: RedisServer, how: str) -> None:
    if how == "stop":
        server.stop()
    else:
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)


def _up(server: RedisServer, how: str) -> None:
    if how == "stop":
        server.start()  # the same port and directory
    else:
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGCONT)


@pytest.mark.parametrize("how", ["stop", "freeze"])
async def test_redis_goes_away_and_returns(
    client_for: ClientFactory, server: RedisServer, tmp_path: Path, how: str
) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "open.yaml").write_text(OPEN)
    store = redis_store(server.url, timeout_s=TIMEOUT_S)
    async with client_for(CLOSED, store=store) as client:
        for org in ("closed", "open"):
            r = await client.post("/v1/reservations", json=body(org))
            assert r.status_code == 201 and r.json()["degraded"] is False, r.text
        assert (await client.get("/readyz")).status_code == 200

        _down(server, how)
        started = time.monotonic()
        r = await client.post("/v1/reservations", json=body("closed"))
        closed_s = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert r.json()["type"].endswith("/store-unavailable")
        assert closed_s < 3 * TIMEOUT_S + 0.5, closed_s
        r = await client.post("/v1/reservations", json=body("open"))
        assert r.status_code == 201, r.text
        assert r.json()["degraded"] is True and r.json()["held_micros"] == 0
        # Still ready (it can decide: fail-closed 503s, fail-open grants); the body says why.
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["store"]["ok"] is False

        _up(server, how)  # the service's pool reconnects by itself
        started = time.monotonic()
        while (await client.get("/readyz")).json()["store"]["ok"] is not True:
            assert time.monotonic() - started < 10, "readiness did not recover"
            await asyncio.sleep(0.05)
        recovered_s = time.monotonic() - started
        for org in ("closed", "open"):
            r = await client.post("/v1/reservations", json=body(org))
            assert r.status_code == 201 and r.json()["degraded"] is False, r.text
        took = f"fail-closed 503 after {closed_s * 1000:.0f} ms"
        print(f"\n{how}: {took}; store ok again {recovered_s:.2f} s after Redis returned")
