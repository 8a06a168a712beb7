"""Once on a real Redis: the guard moves the budget by the exact cost."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from budgetd_client import AsyncBudgetdClient, guard

from budgetd.store.connect import redis_store
from conftest import COST, HAIKU, FakeMessagesAPI, lifespan, make_app

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``BUDGETD_TEST_REDIS_URL``, or a redis-server of our own on a free port (tests flush it)."""
    given = os.environ.get("BUDGETD_TEST_REDIS_URL")
    if given:
        yield given
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed and BUDGETD_TEST_REDIS_URL not set")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("client-redis")
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(workdir), "--maxmemory-policy", "noeviction"]
    proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(5)


async def test_guard_on_real_redis(
    redis_server: str, tmp_path: Path, fake_api: FakeMessagesAPI
) -> None:
    store = redis_store(redis_server, timeout_s=5.0)
    await store.client.flushdb()
    app = make_app(tmp_path, store=store)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with AsyncBudgetdClient("http://budgetd", transport=transport) as budgetd:
            claude = guard(fake_api.async_client(), budgetd=budgetd, org="acme", user="alice")
            async with claude.messages.stream(
                model=HAIKU, max_tokens=300, messages=[{"role": "user", "content": "hi"}]
            ) as stream:
                await stream.until_done()
            state = (await budgetd.budgets(user="alice", org="acme")).budget("user-day")
            assert (state.spent_micros, state.held_micros) == (COST, 0)
