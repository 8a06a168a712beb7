"""Build a Store from configuration: a Redis or Redis Cluster URL, or the embedded store."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import fakeredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.typing import EncodableT

from budgetd.store.scripted import ScriptStore

log = logging.getLogger(__name__)

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


class QueuingCluster(RedisCluster):
    """A cluster client whose calls queue for a free connection instead of failing.

    redis-py's async cluster client has no blocking pool: once a node has ``max_connections``
    in use, the next call raises ``MaxConnectionsError`` at once. A burst of requests (or an org
    whose traffic all lands on one shard) would then fail calls that a moment's wait would have
    served. One semaphore of ``max_connections`` in front of every command gives the same
    behaviour as the single-server ``BlockingConnectionPool``: past the limit a call waits, and
    the store's per-call timeout bounds the wait.

    Everything else is redis-py's: EVALSHA is routed by the slot of its first key, NOSCRIPT
    loads the script (``SCRIPT LOAD`` goes to every primary) and calls again, MOVED/ASK follow
    the redirect, TRYAGAIN is retried after a short sleep.
    """

    def __init__(self, *args: Any, max_connections: int = 64, **kwargs: Any) -> None:
        super().__init__(*args, max_connections=max_connections, **kwargs)
        self._in_flight = asyncio.Semaphore(max_connections)

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        async with self._in_flight:
            return await super().execute_command(*args, **kwargs)


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
            # reinitialize_steps=0: on MOVED, patch the slot table from the redirect and go on.
            # redis-py's default (a full re-discovery every 5th MOVED) closes every node's
            # connections, including those other calls are using at that moment: after a
            # reshard, concurrent calls then fail with errors that are not ConnectionErrors.
            cluster = QueuingCluster.from_url(
                plain, max_connections=max_connections, reinitialize_steps=0, **common
            )
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
