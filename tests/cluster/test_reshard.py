"""Resharding under load: the slot of one org moves to another primary while reserves and
commits run against it. Every call gets a definite answer, Σ held never exceeds the budget, and
after the commits spent equals the sum of committed costs.

How the slot moves (what ``redis-cli --cluster reshard`` does, by hand so the test can pace it):
the target is set IMPORTING, the source MIGRATING, the keys go over with ``MIGRATE ... KEYS`` in
small batches, then every primary is told ``SETSLOT NODE``. While the slot is open, a script call
whose keys are split between the two nodes, or that would create a key (every fresh reserve
creates its reservation hash), is answered TRYAGAIN and redis-py retries it; once the slot is
closed the old owner answers MOVED and redis-py follows.
"""

# redis-py leaves execute_command untyped; the cluster admin commands go through it.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from budgetd.clock import SystemClock
from budgetd.contract import CommitRequest, Denied, ReserveRequest
from budgetd.engine import Engine
from budgetd.metrics import Metrics
from budgetd.store import keys
from budgetd.store.connect import redis_store
from budgetd.store.scripted import ScriptStore
from budgetd.usage import Usage
from tests.cluster.slots import node_ids, owner
from tests.engine.conftest import make_registry
from tests.servers import HOST, LocalCluster

ORG = "hot"
# claude-haiku-test: 1 µ$ per input token, 5 µ$ per output token: a hold of 100 + 5 × 200 =
# 1,100 µ$; a commit of 50 input + 100 output = 550 µ$. 20 users of $0.05 each and an org
# budget of $0.5: both deny during the run.
POLICY = f"""
org: {ORG}
timezone: UTC
defaults:
  hold_ttl_s: 60
budgets:
  - {{name: org-day, scope: org, limit_usd: 0.5, period: day}}
  - {{name: user-day, scope: user, limit_usd: 0.05, period: day}}
rate_limits:
  - {{name: user-rate, scope: user, requests_per_minute: 100000,
     input_tokens_per_minute: 100000000, output_tokens_per_minute: 100000000}}
"""
HOLD, COST, ORG_LIMIT, USER_LIMIT, USERS = 1_100, 550, 500_000, 50_000, 20
WORKERS = 24
BATCH = 4  # keys per MIGRATE: small, so the slot stays open across many calls


@pytest.fixture
async def hot(
    tmp_path: Path, redis_cluster: LocalCluster, redis_cluster_url: str
) -> AsyncIterator[Engine]:
    redis_cluster.flush()
    # A generous timeout: every fresh reserve waits out the whole time the slot is open.
    store: ScriptStore = redis_store(redis_cluster_url, timeout_s=5.0)
    yield Engine(make_registry(tmp_path, POLICY), store, SystemClock(), Metrics())
    await store.close()


async def _migrate_slot(
    cluster: LocalCluster, slot: int, log: Counter[str], phase: list[str]
) -> tuple[int, int]:
    """Move ``slot`` to the next primary, a few keys per MIGRATE, yielding between batches;
    ``phase[0]`` says "open" from MIGRATING until every primary knows the new owner."""
    ids = await node_ids(cluster)
    src = await owner(cluster, slot)
    dst = next(p for p in cluster.ports if p != src)
    conns = {p: aioredis.Redis(host=HOST, port=p, decode_responses=True) for p in cluster.ports}
    try:
        await conns[dst].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src])
        await conns[src].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst])
        phase[0] = "open"
        opened = time.monotonic()
        while True:
            batch = await conns[src].execute_command("CLUSTER", "GETKEYSINSLOT", slot, BATCH)
            if not batch:
                break
            await conns[src].execute_command("MIGRATE", HOST, dst, "", 0, 5000, "KEYS", *batch)
            log["keys moved"] += len(batch)
            log["batches"] += 1
            await asyncio.sleep(0.002)  # let reserves and commits run against a split slot
        # The new owner first, then the old one (it starts answering MOVED), then the rest.
        for port in [dst, src, *(p for p in cluster.ports if p not in (src, dst))]:
            await conns[port].execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[dst])
        phase[0] = "after"
        log["open ms"] = int((time.monotonic() - opened) * 1000)
    finally:
        for c in conns.values():
            await c.aclose()
    return src, dst


def _req(i: int) -> ReserveRequest:
    return ReserveRequest(
        org=ORG,
        model="claude-haiku-test",
        input_tokens=100,
        max_tokens=200,
        user=f"u{i % USERS}",
        reservation_id=f"r{i}",
    )


async def test_reserves_get_definite_answers_while_the_org_slot_moves(
    hot: Engine, redis_cluster: LocalCluster
) -> None:
    engine = hot
    warmed, denied = asyncio.Event(), asyncio.Event()
    slot = key_slot(keys.tag(ORG).encode())
    log: Counter[str] = Counter()
    failures: list[BaseException] = []
    committed: dict[str, int] = {}
    peak: dict[str, int] = {}
    counter = iter(range(10**9))
    stop = asyncio.Event()
    phase = ["before"]  # the phase in which each answer arrived
    longest = [0.0]  # the slowest reserve (it waited out the open slot)

    async def worker() -> None:
        # reserve → commit until the migration is over, then a little longer.
        while not stop.is_set():
            i = next(counter)
            try:
                t0 = time.monotonic()
                started_in = phase[0]
                log[f"reserves started {started_in}"] += 1
                answer = await engine.reserve(_req(i))
                if "open" in (started_in, phase[0]) or started_in != phase[0]:
                    log["reserves in flight while open"] += 1
                waited = time.monotonic() - t0
                longest[0] = max(longest[0], waited)
                if isinstance(answer, Denied):
                    log[f"denied {phase[0]}"] += 1
                    denied.set()
                    continue
                assert not answer.degraded
                log[f"granted {phase[0]}"] += 1
                if log["granted before"] >= 50:
                    warmed.set()
                usage = Usage(input_tokens=50, output_tokens=100)
                done = await engine.commit(ORG, f"r{i}", CommitRequest(usage=usage))
                committed[f"r{i}"] = done.cost_micros
            except Exception as exc:  # every exception is a failure of the property
                failures.append(exc)

    async def watch() -> None:
        # Σ spent + held of the org budget and of one user's budget (in turn), sampled
        # through the store while everything else runs: never above the limit.
        n = 0
        while not stop.is_set():
            view = await engine.budgets(ORG, f"u{n % USERS}", None, None)
            n += 1
            for s in view.scopes:
                if s.kind == "budget":
                    used = (s.spent_micros or 0) + (s.held_micros or 0)
                    peak[s.name] = max(peak.get(s.name, 0), used)
                    assert used <= s.limit, (s.name, used)
            log["samples"] += 1

    tasks = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(warmed.wait(), 10)  # load before the move
    src, dst = await _migrate_slot(redis_cluster, slot, log, phase)
    # Load after the move, on the new owner, until the budgets deny (or a deadline).
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(denied.wait(), 3)
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*tasks, watcher)
    print(
        f"\nreshard slot {slot} {src}->{dst}: "
        f"slowest reserve {longest[0]:.3f}s, {dict(sorted(log.items()))}, peak {peak}"
    )

    assert not failures, Counter(f"{type(f).__name__}: {f}"[:160] for f in failures)
    assert await owner(redis_cluster, slot) == dst
    # The budgets were reached (denials are answers too), and calls ran while the slot was open.
    assert any(k.startswith("denied") for k in log)
    # (Not necessarily *started* while open: every worker may be inside a call, waiting out
    # TRYAGAIN, for the whole time the slot is open.)
    assert log["reserves in flight while open"] > 0
    view = await engine.budgets(ORG, None, None, None)
    org_scope = next(s for s in view.scopes if s.name == "org-day")
    assert org_scope.held_micros == 0
    assert org_scope.spent_micros == sum(committed.values()) == COST * len(committed)
