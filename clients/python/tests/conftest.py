"""Fixtures for the client's tests: a real budgetd app (embedded store, in-process) and a fake
Anthropic Messages API behind an httpx2 MockTransport that the real ``anthropic`` SDK talks to.

Kept independent of the service's ``tests`` package (this directory is not a package)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
import uvicorn
from budgetd_client import AsyncBudgetdClient
from litestar import Litestar

from budgetd.app import create_app
from budgetd.clock import FrozenClock
from budgetd.settings import Settings
from budgetd.store.base import Store
from budgetd.store.connect import embedded_store

ROOT = Path(__file__).resolve().parents[3]
TEST_PRICING = ROOT / "tests" / "data" / "pricing.yaml"
NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
HAIKU = "claude-haiku-test"

POLICY = """
org: acme
timezone: UTC
defaults:
  hold_ttl_s: 60
budgets:
  - {name: org-month, scope: org, limit_usd: 100, period: month}
  - {name: user-day, scope: user, limit_usd: 1, period: day, overrides: {rich: 50}}
"""

# Usage of the canned reply, and what it costs on the test price table (claude-haiku-test:
# input $1, output $5, 1h cache write $2, cache read $0.10 per MTok = micros per token):
# 1000×1 + 2000×2 + 5000×0.1 + 200×5 = 6500 micros.
USAGE = {
    "input_tokens": 1000,
    "cache_creation_input_tokens": 2000,
    "cache_read_input_tokens": 5000,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 2000},
    "output_tokens": 200,
    "service_tier": "standard",
    "inference_geo": "global",
}
COST = 6500


def cost_with_output(output_tokens: int) -> int:
    """The canned prompt's cost with ``output_tokens`` of output."""
    return 1000 + 4000 + 500 + 5 * output_tokens


def write_policy(directory: Path, text: str = POLICY) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pricing.yaml").write_text(TEST_PRICING.read_text())
    (directory / "policy.yaml").write_text(text)
    return directory


def make_app(tmp_path: Path, store: Store | None = None, policy: str = POLICY) -> Litestar:
    settings = Settings(
        policy_dir=write_policy(tmp_path / "policies", policy),
        policy_poll_s=0,
        sweep_interval_s=0,
        clock_sync_s=0,
    )
    return create_app(settings, store=store or embedded_store(), clock=FrozenClock(NOW))


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    """Run the app's lifespan in this event loop (as the service's own API tests do)."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put)  # type: ignore[arg-type]
    )
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    assert started["type"] == "lifespan.startup.complete", started
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task


class Recorder(httpx.AsyncBaseTransport):
    """Wraps a transport: records each request's method, path and JSON body, and can drop the
    connection *after* budgetd handled a request (the answer is lost, the effect is not)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[tuple[str, str, Any]] = []
        self.drop_after: dict[str, int] = {}
        """path suffix → how many more answers to lose."""
        self.down = False

    def bodies(self, suffix: str) -> list[Any]:
        return [b for _, p, b in self.requests if p.endswith(suffix)]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        content = await request.aread()
        self.requests.append(
            (request.method, request.url.path, json.loads(content) if content else None)
        )
        response = await self.inner.handle_async_request(request)
        for suffix, left in self.drop_after.items():
            if left and request.url.path.endswith(suffix):
                self.drop_after[suffix] = left - 1
                await response.aread()
                raise httpx.ReadError("connection reset by peer", request=request)
        return response


@pytest.fixture
def app(tmp_path: Path) -> Litestar:
    return make_app(tmp_path)


@pytest.fixture
async def recorder(app: Litestar) -> AsyncIterator[Recorder]:
    async with lifespan(app):
        yield Recorder(httpx.ASGITransport(app=app))  # type: ignore[arg-type]


@pytest.fixture
async def budgetd(recorder: Recorder) -> AsyncIterator[AsyncBudgetdClient]:
    client = AsyncBudgetdClient("http://budgetd", transport=recorder, backoff_s=0.001)
    yield client
    await client.aclose()


# -- the fake Messages API -------------------------------------------------------------------


def message_json(usage: dict[str, Any] | None = None, model: str = HAIKU) -> dict[str, Any]:
    return {
        "id": "msg_01FakeFakeFake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Hello there!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage or USAGE,
    }


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def stream_events(*, deltas: tuple[int, ...] = (120, 200)) -> list[bytes]:
    """A realistic stream: message_start (prompt usage, output 1), text deltas, and one
    message_delta per entry of ``deltas`` carrying the *cumulative* output count."""
    start_usage = {**USAGE, "output_tokens": 1}
    out = [
        sse(
            "message_start",
            {
                "type": "message_start",
                "message": {**message_json(start_usage), "content": [], "stop_reason": None},
            },
        ),
        sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        sse("ping", {"type": "ping"}),
    ]
    for word in ("Hello", " there", "!"):
        out.append(
            sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": word},
                },
            )
        )
    out.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    for i, output in enumerate(deltas):
        last = i == len(deltas) - 1
        usage: dict[str, Any] = {"output_tokens": output}
        if last:  # the final delta repeats the prompt counts (cumulative), as the API does
            usage |= {k: USAGE[k] for k in ("input_tokens", "cache_read_input_tokens")}
        out.append(
            sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn" if last else None, "stop_sequence": None},
                    "usage": usage,
                },
            )
        )
    out.append(sse("message_stop", {"type": "message_stop"}))
    return out


class Chunks(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """A response body that may break after ``cut`` chunks, like a dropped connection."""

    def __init__(self, chunks: list[bytes], cut: int | None = None) -> None:
        self.chunks = chunks
        self.cut = cut

    def _parts(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if self.cut is not None and i == self.cut:
                raise httpx2.ReadError("peer closed connection mid-stream")
            yield chunk

    def __iter__(self) -> Iterator[bytes]:
        yield from self._parts()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._parts():
            yield chunk


class FakeMessagesAPI:
    """The Messages API from canned data: ``POST /v1/messages`` (JSON or SSE; ``mode`` picks a
    failure; ``tool_use`` answers a tool call until a tool result comes back),
    ``count_tokens``, and Message Batches (submit, retrieve, results, cancel)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.mode = "ok"
        self.cut: int | None = None
        self.deltas: tuple[int, ...] = (120, 200)
        self.tool_use = False
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_results: dict[str, str] = {}
        """custom id → result type (``succeeded`` when absent)."""

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        self.paths.append(f"{request.method} {request.url.raw_path.decode()}")
        path = request.url.path
        if "/batches" in path:
            return self.batch(request)
        body = json.loads(request.content)
        self.calls.append(body)
        self.headers.append(dict(request.headers))
        if self.mode == "overloaded":
            return httpx2.Response(
                529,
                json={
                    "type": "error",
                    "error": {"type": "overloaded_error", "message": "Overloaded"},
                },
            )
        if path.endswith("/count_tokens"):
            return httpx2.Response(200, json={"input_tokens": 1234})
        if not body.get("stream"):
            return httpx2.Response(200, json=self.reply(body))
        events = stream_events(deltas=self.deltas)
        if self.mode == "error_event":
            events = [
                sse(
                    "error",
                    {
                        "type": "error",
                        "error": {"type": "overloaded_error", "message": "Overloaded"},
                    },
                )
            ]
        return httpx2.Response(
            200,
            headers={"content-type": "text/event-stream"},
            stream=Chunks(events, self.cut),
        )

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        last = body["messages"][-1]["content"]
        answered = isinstance(last, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in last
        )
        if not self.tool_use or answered:
            return message_json()
        tool = body["tools"][0]["name"]
        return {
            **message_json(),
            "content": [{"type": "tool_use", "id": "toolu_1", "name": tool, "input": {"x": 2}}],
            "stop_reason": "tool_use",
        }

    def batch(self, request: httpx2.Request) -> httpx2.Response:
        parts = request.url.path.split("/batches")[1].strip("/").split("/")
        if request.method == "POST" and parts == [""]:
            batch_id = f"msgbatch_{len(self.batches) + 1:02d}"
            requests = json.loads(request.content)["requests"]
            self.batches[batch_id] = {"requests": requests, "status": "in_progress"}
            return httpx2.Response(200, json=self.batch_json(batch_id))
        batch_id = parts[0]
        if parts[1:] == ["cancel"]:
            self.batches[batch_id]["status"] = "canceling"
            for r in self.batches[batch_id]["requests"]:
                self.batch_results.setdefault(r["custom_id"], "canceled")
            return httpx2.Response(200, json=self.batch_json(batch_id))
        if parts[1:] == ["results"]:
            lines = []
            for r in self.batches[batch_id]["requests"]:
                kind = self.batch_results.get(r["custom_id"], "succeeded")
                result: dict[str, Any] = {"type": kind}
                if kind == "succeeded":
                    usage = {**USAGE, "service_tier": "batch"}
                    result["message"] = message_json(usage, model=r["params"]["model"])
                elif kind == "errored":
                    result["error"] = {"type": "error", "error": {"type": "api_error"}}
                lines.append(json.dumps({"custom_id": r["custom_id"], "result": result}))
            return httpx2.Response(200, content="\n".join(lines).encode())
        self.batches[batch_id]["status"] = "ended"
        return httpx2.Response(200, json=self.batch_json(batch_id))

    def batch_json(self, batch_id: str) -> dict[str, Any]:
        status = self.batches[batch_id]["status"]
        ended = status == "ended"
        return {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": {
                "processing": 0 if ended else len(self.batches[batch_id]["requests"]),
                "succeeded": 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
            "created_at": "2026-11-23T15:00:00Z",
            "expires_at": "2026-11-24T15:00:00Z",
            "ended_at": "2026-11-23T16:00:00Z" if ended else None,
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": (
                f"http://fake-anthropic/v1/messages/batches/{batch_id}/results" if ended else None
            ),
        }

    def sync_client(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            api_key="sk-test",
            base_url="http://fake-anthropic",
            max_retries=0,
            http_client=httpx2.Client(transport=httpx2.MockTransport(self.handler)),
        )

    def async_client(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            api_key="sk-test",
            base_url="http://fake-anthropic",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(self.handler)),
        )


@pytest.fixture
def fake_api() -> FakeMessagesAPI:
    return FakeMessagesAPI()


# -- budgetd over real HTTP, for the sync client -----------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """An ASGI app served by uvicorn on a loopback port, in a thread: its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="auto")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn exited"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def budgetd_url(app: Litestar) -> Iterator[str]:
    """The app served by uvicorn on a loopback port, in a thread."""
    with serve(app) as url:
        yield url


@pytest.fixture
def dead_url() -> str:
    """A loopback port nobody listens on."""
    return f"http://127.0.0.1:{free_port()}"


Spent = Callable[..., int]
