"""Shared fixtures: a real Redis server for the tests (started here unless
``BUDGETD_TEST_REDIS_URL`` names one), a 3-primary local Redis Cluster (started here unless
``BUDGETD_TEST_CLUSTER_URL`` names one), and the ``store`` fixture over embedded, real Redis and
Redis Cluster."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from budgetd.store.connect import embedded_store, redis_store
from budgetd.store.scripted import ScriptStore
from tests.servers import LocalCluster, start_cluster

DATA = Path(__file__).parent / "data"
TEST_PRICING = DATA / "pricing.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server of our own. Never the machine's shared one: tests flush it."""
    given = os.environ.get("BUDGETD_TEST_REDIS_URL")
    if given:
        yield given
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server not found: install it (Debian: apt-get install redis-server) "
            "or set BUDGETD_TEST_REDIS_URL"
        )
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--maxmemory-policy",
            "noeviction",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(5)


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
