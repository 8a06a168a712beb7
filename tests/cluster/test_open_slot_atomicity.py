"""A script that fails part-way while its slot is being migrated must have written nothing.

Redis runs a Lua script without rollback: when a ``redis.call`` inside it fails, the writes made
before stay. On a cluster node whose slot is MIGRATING, any access to a key of that slot that is
not (or no longer) on the node fails with "Script attempted to access a non local key". The
declared KEYS are checked before the script starts (the call is redirected or answered
TRYAGAIN), but the keys a script finds itself (the plan's bucket and counter keys in commit, the
event marker keys in every script that emits) are checked only when they are touched.

This test moves the org's bucket keys first and then commits. Before the fix, commit.lua voided
the hold, then touched a bucket that was no longer there and failed, leaving the hold voided
but the reservation still ``held``; the client's retry voided it a second time (held went
negative: budget that could be overspent). Every script now reads all the keys it will write
before its first write, so the failure comes first and the retry settles exactly once.
"""

# redis-py leaves execute_command untyped; the cluster admin commands go through it.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from budgetd.clock import SystemClock
from budgetd.contract import CommitRequest, Grant, ReserveRequest
from budgetd.engine import Engine
from budgetd.metrics import Metrics
from budgetd.store import keys
from budgetd.store.connect import redis_store
from budgetd.store.scripted import ScriptStore
from budgetd.usage import Usage
from tests.engine.conftest import make_registry
from tests.servers import HOST, LocalCluster

ORG = "split"
POLICY = f"""
org: {ORG}
timezone: UTC
budgets:
  - {{name: org-day, scope: org, limit_usd: 0.002, period: day}}
rate_limits:
  - {{name: user-rate, scope: user, requests_per_minute: 1000,
     input_tokens_per_minute: 1000000, output_tokens_per_minute: 1000000}}
"""
USAGE = CommitRequest(usage=Usage(input_tokens=50, output_tokens=100))  # 550 µ$


@pytest.fixture
async def engine(tmp_path: Path, redis_cluster: LocalCluster) -> AsyncIterator[Engine]:
    redis_cluster.flush()
    store: ScriptStore = redis_store(redis_cluster.url, timeout_s=2.0)
    yield Engine(make_registry(tmp_path, POLICY), store, SystemClock(), Metrics())
    await store.close()


def _req(rid: str) -> ReserveRequest:
    return ReserveRequest(
        org=ORG,
        model="claude-haiku-test",
        input_tokens=100,
        max_tokens=200,
        user="bob",
        reservation_id=rid,
    )


async def test_a_commit_that_fails_on_an_open_slot_changes_nothing(
    engine: Engine, redis_cluster: LocalCluster
) -> None:
    assert isinstance(await engine.reserve(_req("r0")), Grant)
    await engine.commit(ORG, "r0", USAGE)  # the ledger stream exists from here on, and the
    # 50 % threshold event of r0 created the event stream: every declared key of a commit exists
    assert isinstance(await engine.reserve(_req("r1")), Grant)

    slot = key_slot(keys.tag(ORG).encode())
    nodes = {p: redis.Redis(host=HOST, port=p, decode_responses=True) for p in redis_cluster.ports}
    ids = {p: str(c.execute_command("CLUSTER", "MYID")) for p, c in nodes.items()}
    src = next(p for p, c in nodes.items() if c.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot))
    dst = next(p for p in nodes if p != src)
    counter = next(
        k
        for k in nodes[src].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        if ":c:" in k and nodes[src].hexists(k, "org-day|split|h")
    )
    nodes[dst].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src])
    nodes[src].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst])
    buckets = [
        k for k in nodes[src].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100) if ":tb:" in k
    ]
    nodes[src].execute_command("MIGRATE", HOST, dst, "", 0, 5000, "KEYS", *buckets)
    try:
        failed = None
        try:
            await engine.commit(ORG, "r1", USAGE)
        except Exception as exc:  # the property is about what it left behind
            failed = exc
        assert failed is not None, "expected the commit to fail on the open slot"
        held_after_failure = int(nodes[src].hget(counter, "org-day|split|h") or 0)
        print(f"\ncommit on the open slot: {type(failed).__name__}: {failed}")
    finally:
        rest = nodes[src].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        if rest:
            nodes[src].execute_command("MIGRATE", HOST, dst, "", 0, 5000, "KEYS", *rest)
        for p in [dst, src, *(p for p in nodes if p not in (src, dst))]:
            nodes[p].execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[dst])
    # The client retries the commit with the same id once the slot has settled.
    await engine.commit(ORG, "r1", USAGE)
    spent, held = (
        int(v or 0) for v in nodes[dst].hmget(counter, ["org-day|split|s", "org-day|split|h"])
    )
    for c in nodes.values():
        c.close()
    print(f"after the retry: spent {spent}, held {held} (expected 1100, 0)")
    assert held_after_failure == 1_100, "the failed commit voided the hold anyway"
    assert (spent, held) == (1_100, 0)
