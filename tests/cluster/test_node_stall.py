"""A primary that stalls (alive, answering nothing) past the store timeout: the call over its
pipeline is ``Overdue`` (503 upstream), and its pipeline stays the way to that node — a stall
is not a lost connection, so the node is not handed to redis-py's slower path for a while."""

from __future__ import annotations

import os
import signal

import pytest
from redis.crc import key_slot

from budgetd.store import keys
from budgetd.store.connect import redis_store
from budgetd.store.pipeline import Overdue
from tests.cluster.slots import owner
from tests.servers import LocalCluster

ORG = "stalling"


async def test_a_stalled_primary_is_overdue_and_keeps_its_pipeline(
    redis_cluster: LocalCluster,
) -> None:
    port = await owner(redis_cluster, key_slot(keys.tag(ORG).encode()))
    node = next(n for n in redis_cluster.nodes if n.port == port)
    assert node.proc is not None
    store = redis_store(redis_cluster.url, timeout_s=2.0)
    assert store.node_pipelines is not None
    try:
        assert await store.expire(ORG, 10) == (0, 0)  # redis-py learns the slot table
        assert await store.expire(ORG, 10) == (0, 0)  # the owner's pipeline connects
        assert store.node_pipelines.for_key(keys.holds(ORG)) is not None
        store.timeout_s = 0.2
        os.kill(node.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(Overdue):
                await store.expire(ORG, 10)
        finally:
            os.kill(node.proc.pid, signal.SIGCONT)
        store.timeout_s = 2.0
        assert store.node_pipelines.for_key(keys.holds(ORG)) is not None  # not cooling
        assert await store.expire(ORG, 10) == (0, 0)
    finally:
        await store.close()
