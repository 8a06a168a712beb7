"""The hot path to a Redis Cluster: one pipelined script connection (``store/pipeline.py``) per
primary, chosen by the slot table that redis-py's cluster client keeps.

redis-py's async cluster client pays, per command, for slot routing, a pooled connection and
packing in Python: about three times the client CPU of the pipelined single-server path. Here a
script call goes straight to the pipeline of the primary that owns its first key's slot.

Everything unusual is left to redis-py, which already handles it: before the client has learnt
the slot table, after a node was lost (for ``COOL_DOWN_S``), and on TLS. A call that failed on a
pipeline is handed to redis-py (which follows the redirect and patches its slot table) only
when the failure proves it did not run: no connection could be made (``NotSent``), or the
server refused it (MOVED, ASK, TRYAGAIN, CLUSTERDOWN...: ``ScriptError.refused``). Any other
error reply means the script ran: by the scripts' rule (lib.lua) it failed before its first
write, and the error is the answer. A connection lost after the call was written may have run
it: that is the caller's error to retry (with the same reservation or record id), never a
silent second run here.
"""

from __future__ import annotations

import time

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from budgetd.store.pipeline import ScriptPipeline

COOL_DOWN_S = 1.0
"""How long a node whose connection failed is reached through redis-py only (whose own
failover handling then decides where its slots went)."""


class NodePipelines:
    def __init__(
        self,
        cluster: RedisCluster,
        *,
        username: str | None = None,
        password: str | None = None,
        connect_timeout_s: float = 1.0,
        coalesce: bool = False,
    ) -> None:
        self.cluster = cluster
        self.coalesce = coalesce
        self.username, self.password = username, password
        self.connect_timeout_s = connect_timeout_s
        self._pipelines: dict[str, ScriptPipeline] = {}
        self._cooling: dict[ScriptPipeline, float] = {}

    def for_key(self, key: str) -> ScriptPipeline | None:
        """The pipeline to the primary owning ``key``'s slot; None when redis-py should call."""
        try:
            node = self.cluster.get_node_from_key(key)
        except RedisClusterException:  # the slot table is not known yet
            return None
        if node is None:
            return None
        pipeline = self._pipelines.get(node.name)
        if pipeline is None:
            pipeline = ScriptPipeline(
                node.host,
                int(node.port),
                username=self.username,
                password=self.password,
                connect_timeout_s=self.connect_timeout_s,
                coalesce=self.coalesce,
            )
            self._pipelines[node.name] = pipeline
        if self._cooling and self._cooling.get(pipeline, 0.0) > time.monotonic():
            return None
        return pipeline

    def lost(self, pipeline: ScriptPipeline) -> None:
        """``pipeline``'s connection failed: leave its node to redis-py for a while."""
        self._cooling[pipeline] = time.monotonic() + COOL_DOWN_S

    async def close(self) -> None:
        pipelines, self._pipelines = list(self._pipelines.values()), {}
        for pipeline in pipelines:
            await pipeline.close()
