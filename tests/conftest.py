"""Shared fixtures: a real Redis server for the tests (started here unless
``BUDGETD_TEST_REDIS_URL`` names one), a 3-primary local Redis Cluster (started here unless
``BUDGETD_TEST_CLUSTER_URL`` names one), and the ``store`` fixture over embedded, real Redis and
Redis Cluster."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from budgetd.store.connect import embedded_store, redis_store
from budgetd.store.scripted import ScriptStore
from tests.servers import LocalCluster, start_cluster, start_redis

DATA = Path(__file__).parent / "data"
TEST_PRICING = DATA / "pricing.yaml"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server of our own. Never the machine's shared one: tests flush it."""
    given = os.environ.get("BUDGETD_TEST_REDIS_URL")
    if given:
        yield given
        return
    if shutil.which("redis-server") is None:
        pytest.fail(
            "redis-server not found: install it (Debian: apt-get install redis-server) "
            "or set BUDGETD_TEST_REDIS_URL"
        )
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A Redis Cluster of our own: 3 primaries, no replicas, on free loopback ports."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server and redis-cli are needed for the cluster tests")
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(request: pytest.FixtureRequest) -> str:
    """``redis+cluster://`` URL of the test cluster (every primary is flushed by ``store``)."""
    given = os.environ.get("BUDGETD_TEST_CLUSTER_URL")
    if given:
        return given
    cluster: LocalCluster = request.getfixturevalue("redis_cluster")
    return cluster.url


@pytest.fixture(params=["embedded", "redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ScriptStore]:
    """The same behavioural tests run on the embedded store, a real Redis and a Redis Cluster."""
    if request.param == "embedded":
        made = embedded_store()
    elif request.param == "cluster":
        made = redis_store(request.getfixturevalue("redis_cluster_url"), timeout_s=5.0)
        # FLUSHALL goes to every primary (redis-py routes it so on a cluster client).
        await made.client.flushall()
    else:
        url = request.getfixturevalue("redis_url")
        made = redis_store(url, timeout_s=5.0)
        await made.client.flushdb()
    yield made
    await made.close()
