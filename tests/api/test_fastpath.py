"""The raw-ASGI fast path (api/fastpath.py) answers exactly what the Litestar handlers answer.

Each test drives two apps built the same way over fresh, equivalent state with the same
requests: one through the app as served (``Budgetd.__call__``: the fast path first), one
through Litestar's own ``__call__`` (the reference handlers in api/reservations.py). Status,
headers and JSON bodies must match, except for what the clock generates (expiry times, ledger
ids, token-bucket refills)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar

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
GENERATED = {"expires_at", "ledger_id"}

ASGI = Callable[[Any, Any, Any], Awaitable[None]]
Answer = tuple[int, list[tuple[bytes, bytes]], Any]


class Target:
    """One app, driven over raw ASGI; ``calls_to_litestar`` counts what the fast path handed
    over."""

    def __init__(self, app: Litestar, entry: ASGI) -> None:
        self.app = app
        self.entry = entry
        self.calls_to_litestar = 0

    async def post(
        self,
        path: str,
        body: Any = None,
        *,
        query: str = "",
        headers: dict[str, str] | None = None,
        chunks: list[bytes] | None = None,
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

        raw_headers = [(b"host", b"budgetd")]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": raw_headers,
            "client": ("127.0.0.1", 50000),
            "server": ("budgetd", 80),
        }
        await self.entry(scope, receive, send)
        start, message = sent
        assert start["type"] == "http.response.start"
        assert message["type"] == "http.response.body" and not message.get("more_body")
        assert dict(start["headers"])[b"content-length"] == b"%d" % len(message["body"])
        return start["status"], start["headers"], json.loads(message["body"])


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in headers if name != b"content-length"]


def _normalized(body: Any) -> Any:
    """The body without what the clock generates."""
    if isinstance(body, list):
        return [_normalized(item) for item in body]
    if not isinstance(body, dict):
        return body
    out = {k: _normalized(v) for k, v in body.items() if k not in GENERATED}
    if out.get("kind") == "rate":
        out.pop("remaining", None)  # the bucket refills with wall time between the two calls
    return out


def _app(tmp_path: Path, name: str, keys: Path | None) -> Litestar:
    directory = tmp_path / name
    write_policy(directory, ACME, "acme.yaml")
    write_policy(directory, OTHER, "globex.yaml")
    clock = FrozenClock(datetime(2026, 11, 23, 15, 0, tzinfo=UTC))
    return create_app(settings_for(directory, keys_file=keys), store=embedded_store(), clock=clock)


@asynccontextmanager
async def _started(app: Litestar) -> AsyncIterator[None]:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put)  # type: ignore[arg-type]
    )
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task


class Pair:
    def __init__(self, fast: Target, reference: Target) -> None:
        self.fast = fast
        self.reference = reference

    async def same(self, path: str, body: Any = None, **kwargs: Any) -> Answer:
        """Send the request to both; assert equal answers; return the fast path's."""
        fast = await self.fast.post(path, body, **kwargs)
        reference = await self.reference.post(path, body, **kwargs)
        assert fast[0] == reference[0]
        # content-length follows the generated values too: a time on a whole second is
        # encoded without its fraction ("…:01Z", not "…:01.126000Z").
        assert _headers(fast[1]) == _headers(reference[1])
        assert _normalized(fast[2]) == _normalized(reference[2])
        return fast


@asynccontextmanager
async def _pair(tmp_path: Path, keys: Path | None = None) -> AsyncIterator[Pair]:
    served, reference = _app(tmp_path, "served", keys), _app(tmp_path, "reference", keys)
    fast = Target(served, served)
    litestar_call = served.fastpath.fallback  # type: ignore[attr-defined]

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            fast.calls_to_litestar += 1
        await litestar_call(scope, receive, send)

    served.fastpath.fallback = counted  # type: ignore[attr-defined]

    async def through_litestar(scope: Any, receive: Any, send: Any) -> None:
        await Litestar.__call__(reference, scope, receive, send)

    async with AsyncExitStack() as stack:
        await stack.enter_async_context(_started(served))
        await stack.enter_async_context(_started(reference))
        yield Pair(fast, Target(reference, through_litestar))


@pytest.fixture
def keys_file(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "keys.yaml"
    acme, globex = write_keys(path, ("acme", "app"), ("globex", "app"))
    return path, {"acme": acme, "globex": globex}


async def test_grant_commit_release_and_replays(tmp_path: Path) -> None:
    async with _pair(tmp_path) as pair:
        status, headers, grant = await pair.same(
            "/v1/reservations", {**BODY, "reservation_id": "r1", "max_tokens": 100_000}
        )
        assert status == 201 and (b"content-type", b"application/json") in headers
        assert grant["reservation_id"] == "r1" and grant["warnings"]
        replay = await pair.same(
            "/v1/reservations", {**BODY, "reservation_id": "r1", "max_tokens": 100_000}
        )
        assert replay[2]["replayed"] is True
        status, _, committed = await pair.same(
            "/v1/reservations/r1/commit", USAGE, query="org=acme"
        )
        assert status == 200 and committed["state"] == "committed"
        assert (await pair.same("/v1/reservations/r1/commit", USAGE, query="org=acme"))[2][
            "replayed"
        ]
        await pair.same("/v1/reservations", {**BODY, "reservation_id": "r2"})
        status, _, released = await pair.same("/v1/reservations/r2/release", query="org=acme")
        assert status == 200 and released["state"] == "released"
        # A body in several chunks is read whole.
        text = _json({**BODY, "reservation_id": "r3"})
        chunks = [text[:10], text[10:40], text[40:]]
        assert (await pair.same("/v1/reservations", chunks=chunks))[0] == 201
        assert pair.fast.calls_to_litestar == 0


async def test_denial_is_the_same_429_with_retry_after(tmp_path: Path) -> None:
    async with _pair(tmp_path) as pair:
        await pair.same("/v1/reservations", {**BODY, "max_tokens": 150_000, "reservation_id": "a"})
        status, headers, problem = await pair.same(
            "/v1/reservations", {**BODY, "max_tokens": 150_000, "reservation_id": "b"}
        )
        assert status == 429
        assert dict(headers)[b"content-type"] == b"application/problem+json"
        assert int(dict(headers)[b"retry-after"]) > 0
        assert problem["type"].endswith("/budget-exceeded")
        assert pair.fast.calls_to_litestar == 0


async def test_engine_errors_are_the_same_problems(tmp_path: Path) -> None:
    async with _pair(tmp_path) as pair:
        await pair.same("/v1/reservations", {**BODY, "reservation_id": "r1"})
        answers = [
            # 409: the same id with another request.
            await pair.same("/v1/reservations", {**BODY, "reservation_id": "r1", "max_tokens": 5}),
            # 404: no such reservation; no such org.
            await pair.same("/v1/reservations/nope/commit", USAGE, query="org=acme"),
            await pair.same("/v1/reservations/nope/release", query="org=acme"),
            await pair.same("/v1/reservations", {**BODY, "org": "nobody"}),
            # 422 from the engine: unknown model; no org for a path-only call.
            await pair.same("/v1/reservations", {**BODY, "model": "claude-nope-9"}),
            await pair.same("/v1/reservations/r1/commit", USAGE),
        ]
        assert [status for status, _, _ in answers] == [409, 404, 404, 404, 422, 422]
        for _, headers, problem in answers:
            assert dict(headers)[b"content-type"] == b"application/problem+json"
            assert problem["type"].startswith("https://budgetd.dev/problems/")
        assert pair.fast.calls_to_litestar == 0


async def test_invalid_bodies_are_answered_by_litestar_with_the_body_replayed(
    tmp_path: Path,
) -> None:
    async with _pair(tmp_path) as pair:
        status, headers, problem = await pair.same(
            "/v1/reservations", {**BODY, "max_tokens": "lots"}
        )
        assert status == 422 and dict(headers)[b"content-type"] == b"application/problem+json"
        assert problem["field"] == "max_tokens"
        assert problem["errors"] == [
            {"message": "Expected `int`, got `str`", "key": "max_tokens", "source": "body"}
        ]
        others = [
            await pair.same("/v1/reservations", {"org": "acme"}),  # missing fields
            await pair.same("/v1/reservations", {**BODY, "surprise": 1}),
            await pair.same("/v1/reservations", b"{not json"),  # Litestar: 400
            await pair.same("/v1/reservations", b""),
            await pair.same(
                "/v1/reservations/r1/commit", {"usage": {"input_tokens": "x"}}, query="org=acme"
            ),
        ]
        assert [status for status, _, _ in others] == [422, 422, 400, 422, 422]
        assert pair.fast.calls_to_litestar == 6
        # Lax conversions Litestar accepts are accepted here too, and served fast.
        lax = {**BODY, "max_tokens": "100", "batch": "false", "reservation_id": "lax"}
        assert (await pair.same("/v1/reservations", lax))[0] == 201
        assert pair.fast.calls_to_litestar == 6


async def test_what_the_fast_path_does_not_parse_goes_to_litestar(tmp_path: Path) -> None:
    async with _pair(tmp_path) as pair:
        await pair.same("/v1/reservations", {**BODY, "reservation_id": "r1"})
        await pair.same("/v1/reservations/-bad/release", query="org=acme")  # id pattern: 422
        await pair.same("/v1/reservations/r1/release", query="org=ac%6De")  # unquoting
        await pair.same("/v1/reservations", {**BODY, "reservation_id": "r2"}, query="x=1")
        assert pair.fast.calls_to_litestar == 3


async def test_auth_cross_org_and_org_from_the_key(
    tmp_path: Path, keys_file: tuple[Path, dict[str, str]]
) -> None:
    path, made = keys_file
    acme = {"Authorization": f"Bearer {made['acme']}"}
    async with _pair(tmp_path, path) as pair:
        # 401 without a key, or with an unknown one.
        assert (await pair.same("/v1/reservations", BODY))[0] == 401
        bad = {"Authorization": "Bearer bdk_nope"}
        assert (await pair.same("/v1/reservations", BODY, headers=bad))[0] == 401
        # 403 across orgs, on every hot route.
        other = {**BODY, "org": "globex"}
        forbidden = [
            await pair.same("/v1/reservations", other, headers=acme),
            await pair.same("/v1/reservations/x/commit", USAGE, query="org=globex", headers=acme),
            await pair.same("/v1/reservations/x/release", query="org=globex", headers=acme),
        ]
        for status, _, problem in forbidden:
            assert status == 403 and problem["field"] == "org"
        # The key's org when ?org= is absent, or ?org= naming it.
        await pair.same("/v1/reservations", {**BODY, "reservation_id": "k1"}, headers=acme)
        await pair.same("/v1/reservations", {**BODY, "reservation_id": "k2"}, headers=acme)
        assert (await pair.same("/v1/reservations/k1/commit", USAGE, headers=acme))[0] == 200
        released = await pair.same("/v1/reservations/k2/release", query="org=acme", headers=acme)
        assert released[0] == 200
        assert pair.fast.calls_to_litestar == 0


async def test_unexpected_errors_are_litestars_500(tmp_path: Path) -> None:
    async with _pair(tmp_path) as pair:

        async def broken(*_: Any) -> Any:
            raise RuntimeError("boom")

        pair.fast.app.state.engine.reserve = broken
        pair.reference.app.state.engine.reserve = broken
        status, headers, body = await pair.same("/v1/reservations", BODY)
        assert status == 500 and dict(headers)[b"content-type"] == b"application/json"
        assert body == {"status_code": 500, "detail": "Internal Server Error"}
        assert pair.fast.calls_to_litestar == 0


async def test_bodies_over_the_limit_are_litestars_413(tmp_path: Path) -> None:
    async with _pair(tmp_path) as pair:
        limit = pair.fast.app.request_max_body_size
        assert isinstance(limit, int)
        announced = {"Content-Length": str(limit + 1)}
        assert (await pair.same("/v1/reservations", b"{}", headers=announced))[0] == 413
        half = b" " * (limit // 2 + 1)
        streamed = await pair.same("/v1/reservations", chunks=[half, half])
        assert streamed[0] == 413
        assert pair.fast.calls_to_litestar == 2
