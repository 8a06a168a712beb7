"""Instrumentation around the whole ASGI app, outermost, so no route escapes it (the raw-ASGI
fast path included): a request id (the caller's ``X-Request-Id`` or a new one, echoed in the
answer and bound to every log line of the request), the request duration by route and
outcome, and the access log line."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from budgetd.metrics import Metrics

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

REQUEST_ID_HEADER = b"x-request-id"
_MAX_REQUEST_ID = 128

# Named routes: a label never carries a raw path (ids, org names). Exact paths first, then
# prefixes; anything else is "other".
_EXACT = {
    "/v1/reservations": "reserve",
    "/v1/usage": "usage",
    "/v1/cost": "cost",
    "/v1/budgets": "budgets",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/metrics": "metrics",
    "/v1/messages": "gateway",
}
_PREFIXES = (
    ("/v1/admin/", "admin"),
    ("/schema", "schema"),
    ("/v1/reports", "reports"),
    ("/ui", "web"),
)


def route_of(path: str) -> str:
    named = _EXACT.get(path)
    if named is not None:
        return named
    if path.startswith("/v1/reservations/"):
        if path.endswith("/commit"):
            return "commit"
        if path.endswith("/release"):
            return "release"
        return "reservation"
    for prefix, name in _PREFIXES:
        if path.startswith(prefix):
            return name
    return "other"


def outcome_of(status: int) -> str:
    if status < 400:
        return "ok"
    if status == 429:
        return "denied"
    if status in (401, 403):
        return "unauthorized"
    if status == 404:
        return "not_found"
    if status == 503:
        return "unavailable"
    return "invalid" if status < 500 else "error"


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            given = value.decode("latin-1").strip()
            if 0 < len(given) <= _MAX_REQUEST_ID and given.isprintable():
                return given
            break
    return uuid.uuid4().hex


class Observed:
    """ASGI app: ``app`` with every HTTP request measured, id'd and logged."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        rid = _request_id(scope["headers"])
        rid_header = (REQUEST_ID_HEADER, rid.encode("latin-1"))
        status = 500

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.observe_request(route_of(scope["path"]), outcome_of(status), elapsed)
