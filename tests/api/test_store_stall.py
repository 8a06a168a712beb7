"""Every store path maps a stalled or unreachable Redis to 503 store-unavailable (issue 9, item
11): a commit that lands on a replica other than the one that granted its hold first reads the
reservation's model, and that read answered 500 when Redis stalled, so clients that retry on
503 lost the commit."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from budgetd.store.connect import redis_store
from tests.api.conftest import ClientFactory
from tests.servers import start_redis

POLICY = """
org: acme
timezone: UTC
budgets:
  - {name: org-day, scope: org, limit_usd: 10, period: day}
"""
BODY = {"org": "acme", "model": "claude-haiku-test", "input_tokens": 10, "max_tokens": 10}
USAGE = {"usage": {"input_tokens": 7, "output_tokens": 3}}


async def test_a_commit_on_another_replica_is_503_while_redis_stalls(
    client_for: ClientFactory, tmp_path: Path
) -> None:
    server = start_redis(tmp_path / "redis")
    try:
        granting = redis_store(server.url, timeout_s=0.3)
        other = redis_store(server.url, timeout_s=0.3)
        async with (
            client_for(POLICY, store=granting) as first,
            client_for(POLICY, store=other) as second,
        ):
            grant = await first.post("/v1/reservations", json=BODY)
            assert grant.status_code == 201
            rid = grant.json()["reservation_id"]
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)  # Redis stalls
            try:
                for client in (second, first):
                    stalled = await client.post(
                        f"/v1/reservations/{rid}/commit", params={"org": "acme"}, json=USAGE
                    )
                    assert stalled.status_code == 503, stalled.text
                    assert stalled.json()["type"].endswith("/store-unavailable")
                    assert stalled.headers["retry-after"]
                budgets = await second.get("/v1/budgets", params={"org": "acme"})
                assert budgets.status_code == 503
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            # The client's retry on 503 then settles the commit, once.
            done = await second.post(
                f"/v1/reservations/{rid}/commit", params={"org": "acme"}, json=USAGE
            )
            assert done.status_code == 200, done.text
    finally:
        server.stop()
