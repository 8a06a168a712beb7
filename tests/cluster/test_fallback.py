"""The cluster hot path hands a call to redis-py only when the failure proves the script did not
run (issue 9, item 3): an error reply from a script that ran is the answer, never a second run;
a refusal (MOVED) is followed. Runs are counted by the owning node's own statistics."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from redis.crc import key_slot

from budgetd.store import keys
from budgetd.store.connect import redis_store
from tests.cluster.slots import evalsha_by_pipeline, owner
from tests.servers import HOST, LocalCluster

ORG = "fallback"


async def script_runs(port: int) -> int:
    """EVALSHA and EVAL calls the node at ``port`` has served (failed ones included)."""
    async with aioredis.Redis(host=HOST, port=port, decode_responses=True) as node:
        stats: dict[str, Any] = await node.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
    )


async def test_a_script_that_failed_on_the_pipeline_is_not_run_again(
    redis_cluster: LocalCluster,
) -> None:
    port = await owner(redis_cluster, key_slot(keys.tag(ORG).encode()))
    store = redis_store(redis_cluster.url, timeout_s=2.0)
    try:
        await store.expire(ORG, 10)  # redis-py learns the slot table
        await store.expire(ORG, 10)  # now over the owner's pipeline
        assert await evalsha_by_pipeline(port) == 1
        # A hold index of the wrong type: expire.lua runs and fails on its first read.
        await store.client.set(keys.holds(ORG), "not a sorted set")
        before = await script_runs(port)
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            await store.expire(ORG, 10)
        assert await script_runs(port) == before + 1
    finally:
        await store.client.delete(keys.holds(ORG))
        await store.close()
