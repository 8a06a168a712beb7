"""Readiness on a cluster asks every primary: one shard down takes down the orgs it holds."""

from __future__ import annotations

import os
import signal

from budgetd.store.connect import redis_store
from tests.servers import LocalCluster


async def test_one_frozen_primary_makes_the_store_unready(redis_cluster: LocalCluster) -> None:
    store = redis_store(redis_cluster.url, timeout_s=0.5)
    try:
        assert await store.ping()
        victim = redis_cluster.nodes[-1].proc
        assert victim is not None
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            assert not await store.ping()
        finally:
            os.kill(victim.pid, signal.SIGCONT)
        assert await store.ping()
    finally:
        await store.close()
