"""Once on a real Redis: the guard moves the budget by the exact cost."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
import redis
from budgetd_client import AsyncBudgetdClient, BudgetdClient, guard

from budgetd.store.connect import redis_store
from conftest import (
    COST,
    HAIKU,
    FakeMessagesAPI,
    cost_with_output,
    lifespan,
    make_app,
    message_json,
    serve,
    stream_events,
)

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


class LoopbackAnthropic:
    """A fake Messages API served over real HTTP: JSON, SSE sent event by event, or an SSE
    stream whose connection drops after ``cut`` events."""

    def __init__(self) -> None:
        self.cut: int | None = None
        self.requests: list[tuple[str, dict[str, str]]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append((scope["path"], headers))
        request = json.loads(body)
        if not request.get("stream"):
            payload = json.dumps(message_json()).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": payload})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for i, event in enumerate(stream_events()):
            if self.cut is not None and i == self.cut:
                raise ConnectionResetError("the upstream went away mid-stream")
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def test_end_to_end_over_loopback_http_and_real_redis(redis_server: str, tmp_path: Path) -> None:
    """The real SDK over real sockets to a fake Anthropic, budgetd served over HTTP on Redis."""
    redis.Redis.from_url(redis_server).flushdb()
    upstream = LoopbackAnthropic()
    app = make_app(tmp_path, store=redis_store(redis_server, timeout_s=5.0))
    with serve(app) as budgetd_url, serve(upstream) as upstream_url:
        budgetd = BudgetdClient(budgetd_url, org="acme")
        claude = guard(
            anthropic.Anthropic(api_key="sk-test", base_url=upstream_url, max_retries=0),
            budgetd=budgetd,
            org="acme",
            user="alice",
        )

        def user_day() -> tuple[int | None, int | None]:
            state = budgetd.budgets(user="alice").budget("user-day")
            return state.spent_micros, state.held_micros

        messages = [{"role": "user", "content": "hi"}]
        claude.with_options(timeout=30).messages.create(
            model=HAIKU,
            max_tokens=300,
            messages=messages,
            extra_headers={"x-budgetd-feature": "e2e"},
        )
        assert user_day() == (COST, 0)
        assert "x-budgetd-feature" not in upstream.requests[0][1]

        with claude.messages.stream(model=HAIKU, max_tokens=300, messages=messages) as stream:
            assert stream.get_final_text() == "Hello there!"
        assert user_day() == (2 * COST, 0)

        upstream.cut = 8  # after the message_delta with output 120
        with (
            pytest.raises(httpx2.TransportError),
            claude.messages.stream(model=HAIKU, max_tokens=300, messages=messages) as stream,
        ):
            stream.until_done()
        assert user_day() == (2 * COST + cost_with_output(120), 0)

        with pytest.raises(anthropic.RateLimitError) as denied:
            claude.messages.create(model=HAIKU, max_tokens=1_000_000, messages=messages, timeout=60)
        assert "user-day (user alice)" in denied.value.message
        assert len(upstream.requests) == 3
        budgetd.close()
