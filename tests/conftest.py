"""Shared fixtures: a real Redis server for the tests (started here unless
``BUDGETD_TEST_REDIS_URL`` names one), and the ``store`` fixture over embedded and real Redis."""

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


@pytest.fixture(params=["embedded", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ScriptStore]:
    """The same behavioural tests run on the embedded store and on a real Redis."""
    if request.param == "embedded":
        made = embedded_store()
    else:
        url = request.getfixturevalue("redis_url")
        made = redis_store(url, timeout_s=5.0)
        await made.client.flushdb()
    yield made
    await made.close()
