"""The raw-ASGI fast path (api/fastpath.py) is the one implementation of reserve, commit and
release: every answer of those routes, refusals included, is its own (nothing is handed to
Litestar), driven here over raw ASGI so chunked bodies and odd scopes can be sent."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar

from budgetd.api.validation import MAX_BODY_BYTES
from budgetd.app import create_app
from budgetd.clock import FrozenClock
from budgetd.store.connect import embedded_store
from tests.api.conftest import settings_for, write_keys, write_policy
from tests.engine.conftest import ACME

OTHER = ACME.replace("org: acme", "org: globex")
BODY = {
    "org": "acme",
    "model": "claude-haiku-test",
    "input_tokens": 100,
    "max_tokens": 100,
    "user": "bob",
    "feature": "chat",
}
USAGE = {"usage": {"input_tokens": 50, "output_tokens": 20}}
PROBLEM = b"application/problem+json"

ASGI = Callable[[Any, Any, Any], Awaitable[None]]
Answer = tuple[int, dict[bytes, bytes], Any]


class Target:
    """The app as served, driven over raw ASGI; ``calls_to_litestar`` counts what the fast
    path handed over (never a reservation route)."""

    def __init__(self, app: Litestar) -> None:
        self.app = app
        self.calls_to_litestar = 0

    async def post(
        self,
        path: str,
        body: Any = None,
        *,
        query: str = "",
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
        chunks: list[bytes] | None = None,
        method: str = "POST",
        root_path: str = "",
    ) -> Answer:
        if chunks is None:
            chunks = [b"" if body is None else body if isinstance(body, bytes) else _json(body)]
        pending = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
            for i, c in enumerate(chunks)
        ]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop(0)
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        raw_headers = [(b"host", b"budgetd")]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in pairs]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": root_path + path,
            "raw_path": (root_path + path).encode(),
            "query_string": query.encode(),
            "root_path": root_path,
            "headers": raw_headers,
            "client": ("127.0.0.1", 50000),
            "server": ("budgetd", 80),
        }
        await self.app(scope, receive, send)
        start, message = sent
        assert start["type"] == "http.response.start"
        assert message["type"] == "http.response.body" and not message.get("more_body")
        head = dict(start["headers"])
        assert head[b"content-length"] == b"%d" % len(message["body"])
        return start["status"], head, json.loads(message["body"])


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _app(tmp_path: Path, keys: Path | None) -> Litestar:
    directory = tmp_path / "policies"
    write_policy(directory, ACME, "acme.yaml")
    write_policy(directory, OTHER, "globex.yaml")
    clock = FrozenClock(datetime(2026, 11, 23, 15, 0, tzinfo=UTC))
    return create_app(settings_for(directory, keys_file=keys), store=embedded_store(), clock=clock)


@asynccontextmanager
async def _served(tmp_path: Path, keys: Path | None = None) -> AsyncIterator[Target]:
    app = _app(tmp_path, keys)
    target = Target(app)
    litestar_call = app.fastpath.fallback  # type: ignore[attr-defined]

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            target.calls_to_litestar += 1
        await litestar_call(scope, receive, send)

    app.fastpath.fallback = counted  # type: ignore[attr-defined]
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put)  # type: ignore[arg-type]
    )
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        yield target
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task


@pytest.fixture
def keys_file(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "keys.yaml"
    acme, globex = write_keys(path, ("acme", "app"), ("globex", "app"))
    return path, {"acme": acme, "globex": globex}


async def test_grant_commit_release_and_replays(tmp_path: Path) -> None:
    async with _served(tmp_path) as fast:
        granted = await fast.post("/v1/reservations", {**BODY, "reservation_id": "r1"})
        assert granted[0] == 201 and granted[2]["reservation_id"] == "r1"
        replay = await fast.post("/v1/reservations", {**BODY, "reservation_id": "r1"})
        assert replay[0] == 201 and replay[2]["replayed"] is True
        committed = await fast.post("/v1/reservations/r1/commit", USAGE, query="org=acme")
        assert committed[0] == 200 and committed[2]["state"] == "committed"
        await fast.post("/v1/reservations", {**BODY, "reservation_id": "r2"})
        # ?org= percent-encoded is read like any other query.
        released = await fast.post("/v1/reservations/r2/release", query="org=ac%6De")
        assert released[0] == 200 and released[2]["state"] == "released"
        late = await fast.post("/v1/reservations/r2/commit", USAGE, query="org=acme")
        assert late[0] == 409 and late[1][b"content-type"] == PROBLEM
        assert fast.calls_to_litestar == 0


async def test_refusals_are_its_own_problems_naming_the_field(tmp_path: Path) -> None:
    async with _served(tmp_path) as fast:
        bad_id = await fast.post("/v1/reservations/-bad/release", query="org=acme")
        assert (bad_id[0], bad_id[2]["field"]) == (422, "reservation_id")
        assert "starting with a letter or digit" in bad_id[2]["detail"]
        extra = await fast.post("/v1/reservations", BODY, query="x=1")
        assert (extra[0], extra[2]["field"]) == (422, "x")
        twice = await fast.post("/v1/reservations/r/release", query="org=acme&org=globex")
        assert (twice[0], twice[2]["field"]) == (422, "org")
        malformed = await fast.post("/v1/reservations", b"{not json")
        assert malformed[0] == 400 and malformed[2]["type"].endswith("/malformed-request")
        assert fast.calls_to_litestar == 0


async def test_other_methods_are_405_with_allow(tmp_path: Path) -> None:
    async with _served(tmp_path) as fast:
        for path in ("/v1/reservations", "/v1/reservations/r1/commit"):
            status, headers, problem = await fast.post(path, method="GET")
            assert (status, headers[b"allow"]) == (405, b"POST")
            assert problem["type"].endswith("/method-not-allowed")


async def test_a_root_path_is_served_too(tmp_path: Path) -> None:
    async with _served(tmp_path) as fast:
        granted = await fast.post("/v1/reservations", BODY, root_path="/budgetd")
        assert granted[0] == 201 and fast.calls_to_litestar == 0


async def test_auth_cross_org_and_org_from_the_key(
    tmp_path: Path, keys_file: tuple[Path, dict[str, str]]
) -> None:
    path, made = keys_file
    acme = {"Authorization": f"Bearer {made['acme']}"}
    async with _served(tmp_path, path) as fast:
        # 401 without a key, or with an unknown one.
        assert (await fast.post("/v1/reservations", BODY))[0] == 401
        bad = {"Authorization": "Bearer bdk_nope"}
        assert (await fast.post("/v1/reservations", BODY, headers=bad))[0] == 401
        # 403 across orgs, on every hot route.
        other = {**BODY, "org": "globex"}
        forbidden = [
            await fast.post("/v1/reservations", other, headers=acme),
            await fast.post("/v1/reservations/x/commit", USAGE, query="org=globex", headers=acme),
            await fast.post("/v1/reservations/x/release", query="org=globex", headers=acme),
        ]
        for status, _, problem in forbidden:
            assert status == 403 and problem["field"] == "org"
        # The key's org when ?org= is absent, or ?org= naming it.
        await fast.post("/v1/reservations", {**BODY, "reservation_id": "k1"}, headers=acme)
        await fast.post("/v1/reservations", {**BODY, "reservation_id": "k2"}, headers=acme)
        assert (await fast.post("/v1/reservations/k1/commit", USAGE, headers=acme))[0] == 200
        released = await fast.post("/v1/reservations/k2/release", query="org=acme", headers=acme)
        assert released[0] == 200
        assert fast.calls_to_litestar == 0


async def test_unexpected_errors_are_a_logged_500_problem(tmp_path: Path) -> None:
    # Litestar's logging set-up replaces the root handlers at start: listen on budgetd's own.
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger("budgetd").addHandler(handler)
    async with _served(tmp_path) as fast:

        async def broken(*_: Any, **__: Any) -> Any:
            raise RuntimeError("boom")

        fast.app.state.engine.reserve = broken
        status, headers, body = await fast.post("/v1/reservations", BODY)
        assert status == 500 and headers[b"content-type"] == PROBLEM
        assert body["type"].endswith("/internal-error")
        logging.getLogger("budgetd").removeHandler(handler)
        assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in seen)


async def test_bodies_over_the_limit_are_413_problems(tmp_path: Path) -> None:
    async with _served(tmp_path) as fast:
        announced = {"Content-Length": str(MAX_BODY_BYTES + 1)}
        status, _, problem = await fast.post("/v1/reservations", b"{}", headers=announced)
        assert status == 413 and problem["type"].endswith("/payload-too-large")
        half = b" " * (MAX_BODY_BYTES // 2 + 1)
        streamed = await fast.post("/v1/reservations", chunks=[half, half])
        assert streamed[0] == 413
        chunked = await fast.post("/v1/reservations", chunks=[_json(BODY)[:10], _json(BODY)[10:]])
        assert chunked[0] == 201
        assert fast.calls_to_litestar == 0
