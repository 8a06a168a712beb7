"""Who owns a slot of the test cluster, the node ids the CLUSTER SETSLOT commands take, and which
script calls a node served over budgetd's pipelined connections."""

# redis-py leaves execute_command untyped; the cluster admin commands go through it.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import redis.asyncio as aioredis

from budgetd.store.pipeline import CONNECTION_NAME
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


async def evalsha_by_pipeline(port: int) -> int:
    """Connections of budgetd's pipelines on the node at ``port`` whose last command was a
    script call (EVALSHA)."""
    async with aioredis.Redis(host=HOST, port=port, decode_responses=True) as node:
        listing: str = await node.execute_command("CLIENT", "LIST")
    served = 0
    for line in listing.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if fields.get("name") == CONNECTION_NAME and fields.get("cmd") == "evalsha":
            served += 1
    return served
