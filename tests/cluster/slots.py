"""Who owns a slot of the test cluster, and the node ids the CLUSTER SETSLOT commands take."""

# redis-py leaves execute_command untyped; the cluster admin commands go through it.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import redis.asyncio as aioredis

from tests.servers import HOST, LocalCluster


async def node_ids(cluster: LocalCluster) -> dict[int, str]:
    """Port → node id, for every primary."""
    out = {}
    for port in cluster.ports:
        async with aioredis.Redis(host=HOST, port=port, decode_responses=True) as node:
            out[port] = str(await node.execute_command("CLUSTER", "MYID"))
    return out


async def owner(cluster: LocalCluster, slot: int) -> int:
    """The port of the primary that owns ``slot``, as the first node sees it."""
    async with aioredis.Redis(host=HOST, port=cluster.ports[0], decode_responses=True) as node:
        for start, end, primary, *_ in await node.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(primary[1])
    raise AssertionError(f"slot {slot} not covered")
