"""The cluster hot path: script calls go over the pipelined connection of the primary that owns
the org's slot, and follow the slot when it moves (the MOVED reply hands the call to redis-py,
which patches the slot table the pipelines are chosen by)."""

# redis-py leaves execute_command untyped; the cluster admin commands go through it.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import redis.asyncio as aioredis
from redis.crc import key_slot

from budgetd.store import keys
from budgetd.store.connect import redis_store
from tests.cluster.slots import evalsha_by_pipeline, node_ids, owner
from tests.servers import HOST, LocalCluster

ORG = "pipelined"


async def _move(cluster: LocalCluster, slot: int, to_port: int) -> None:
    ids = await node_ids(cluster)
    for port in [to_port, *(p for p in cluster.ports if p != to_port)]:
        async with aioredis.Redis(host=HOST, port=port, decode_responses=True) as node:
            await node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to_port])


async def test_script_calls_ride_the_owner_pipeline_and_follow_a_moved_slot(
    redis_cluster: LocalCluster,
) -> None:
    slot = key_slot(keys.tag(ORG).encode())
    first = await owner(redis_cluster, slot)
    store = redis_store(redis_cluster.url, timeout_s=2.0)
    assert store.node_pipelines is not None
    try:
        # Before the client knows the slot table, redis-py makes the call (and learns it).
        assert store.node_pipelines.for_key(keys.holds(ORG)) is None
        assert await store.expire(ORG, 10) == (0, 0)
        assert await store.expire(ORG, 10) == (0, 0)
        assert await evalsha_by_pipeline(first) == 1

        second = next(p for p in redis_cluster.ports if p != first)
        await _move(redis_cluster, slot, second)
        try:
            # The old owner answers MOVED; the call still succeeds, through redis-py...
            assert await store.expire(ORG, 10) == (0, 0)
            # ...and the next one goes over the new owner's pipeline.
            assert await store.expire(ORG, 10) == (0, 0)
            assert await evalsha_by_pipeline(second) == 1
        finally:
            await _move(redis_cluster, slot, first)
    finally:
        await store.close()
