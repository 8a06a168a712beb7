"""Build a Store from configuration: a Redis or Redis Cluster URL, or the embedded store."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import fakeredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterError
from redis.typing import EncodableT

from budgetd.store.node_pipelines import NodePipelines
from budgetd.store.pipeline import ScriptPipeline
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

    Slot migration: while an org's slot is being moved, every call that would create a key
    there (each fresh reserve creates its reservation hash) or whose keys are split between the
    two nodes is answered TRYAGAIN, for as long as the slot stays open. redis-py retries that
    16 times within about 0.4 s and then gives up with ``ClusterError("TTL exhausted.")``. That
    error means no node ran the command (every attempt was redirected or refused), so the call
    is tried again here with a short backoff for up to ``retry_for_s`` (the store's timeout), and
    the caller gets either the answer or a timeout, never a half-done call.

    Everything else is redis-py's: EVALSHA is routed by the slot of its first key, NOSCRIPT
    loads the script (``SCRIPT LOAD`` goes to every primary) and calls again, MOVED/ASK follow
    the redirect.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        max_connections = int(kwargs.pop("max_connections", 64))
        self._retry_for_s = float(kwargs.pop("retry_for_s", 1.0))
        kwargs["max_connections"] = max_connections
        super().__init__(*args, **kwargs)
        self._in_flight = asyncio.Semaphore(max_connections)

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        async with self._in_flight:
            give_up = time.monotonic() + self._retry_for_s
            delay = 0.01
            while True:
                try:
                    return await super().execute_command(*args, **kwargs)
                except ClusterError as exc:
                    # Only the redirect/TRYAGAIN budget running out (not ClusterDownError and
                    # other subclasses): the command ran nowhere, so calling again is safe.
                    if type(exc) is not ClusterError or time.monotonic() + delay > give_up:
                        raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)


def redis_store(
    url: str, *, timeout_s: float = 1.0, max_connections: int = 64, coalesce: bool = False
) -> ScriptStore:
    """``redis://``/``rediss://`` for one server; ``redis+cluster://`` for a Redis Cluster.
    ``coalesce``: the pipelined connections' write coalescing (``store/pipeline.py``)."""
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
                plain,
                max_connections=max_connections,
                retry_for_s=timeout_s,
                reinitialize_steps=0,
                **common,
            )
            return ScriptStore(
                cluster,
                description=f"redis cluster {plain}",
                timeout_s=timeout_s,
                node_pipelines=_node_pipelines(cluster, plain, timeout_s, coalesce),
            )
    # A blocking pool: past ``max_connections`` a call waits (within its timeout) for a free
    # connection instead of failing, so a burst of requests queues rather than erroring.
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout_s, **common
    )
    client = Redis(connection_pool=pool)
    return ScriptStore(
        client,
        description=f"redis {url}",
        timeout_s=timeout_s,
        pipeline=_pipeline(url, timeout_s, coalesce),
    )


def _pipeline(url: str, timeout_s: float, coalesce: bool) -> ScriptPipeline | None:
    """The pipelined hot path for ``redis://host:port/db`` (TLS and sockets stay on redis-py)."""
    parsed = urlsplit(url)
    if parsed.scheme != "redis" or not parsed.hostname:
        return None
    return ScriptPipeline(
        parsed.hostname,
        parsed.port or 6379,
        db=int(parsed.path.lstrip("/") or 0),
        username=unquote(parsed.username) if parsed.username else None,
        password=unquote(parsed.password) if parsed.password else None,
        connect_timeout_s=timeout_s,
        coalesce=coalesce,
    )


def _node_pipelines(
    cluster: RedisCluster, url: str, timeout_s: float, coalesce: bool
) -> NodePipelines | None:
    """The pipelined hot path per primary, for plain-TCP clusters (TLS stays on redis-py)."""
    parsed = urlsplit(url)
    if parsed.scheme != "redis":
        return None
    return NodePipelines(
        cluster,
        username=unquote(parsed.username) if parsed.username else None,
        password=unquote(parsed.password) if parsed.password else None,
        connect_timeout_s=timeout_s,
        coalesce=coalesce,
    )


def embedded_store() -> ScriptStore:
    """fakeredis with Lua in this process: the same scripts, no server, nothing persisted."""
    log.warning(
        "embedded store: budgets live in this process's memory only; they are lost on restart "
        "and not shared with other replicas. Set BUDGETD_REDIS_URL for real use."
    )
    client = fakeredis.FakeAsyncRedis(decode_responses=True, max_connections=2**20)
    return ScriptStore(client, description="embedded (in-memory, fakeredis)", timeout_s=5.0)
