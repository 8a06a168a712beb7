"""Build a Store from configuration: a Redis or Redis Cluster URL, or the embedded store."""

from __future__ import annotations

import logging

import fakeredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster

from budgetd.store.scripted import ScriptStore

log = logging.getLogger(__name__)

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def redis_store(url: str, *, timeout_s: float = 1.0, max_connections: int = 64) -> ScriptStore:
    """``redis://``/``rediss://`` for one server; ``redis+cluster://`` for a Redis Cluster."""
    common = {
        "decode_responses": True,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
    }
    for scheme in CLUSTER_SCHEMES:
        if url.startswith(scheme):
            plain = url.replace("+cluster", "", 1)
            cluster = RedisCluster.from_url(plain, **common)
            return ScriptStore(cluster, description=f"redis cluster {plain}", timeout_s=timeout_s)
    # A blocking pool: past ``max_connections`` a call waits (within its timeout) for a free
    # connection instead of failing, so a burst of requests queues rather than erroring.
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout_s, **common
    )
    client = Redis(connection_pool=pool)
    return ScriptStore(client, description=f"redis {url}", timeout_s=timeout_s)


def embedded_store() -> ScriptStore:
    """fakeredis with Lua in this process: the same scripts, no server, nothing persisted."""
    log.warning(
        "embedded store: budgets live in this process's memory only; they are lost on restart "
        "and not shared with other replicas. Set BUDGETD_REDIS_URL for real use."
    )
    client = fakeredis.FakeAsyncRedis(decode_responses=True, max_connections=2**20)
    return ScriptStore(client, description="embedded (in-memory, fakeredis)", timeout_s=5.0)
