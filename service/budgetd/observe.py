"""Instrumentation around the whole ASGI app, outermost, so no route escapes it (the raw-ASGI
fast path included): a request id (the caller's ``X-Request-Id`` or a new one, echoed in the
answer and on every log line of the request), the request duration by route and outcome, the
access log line, and a server span when tracing is on (``budgetd.tracing``)."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from budgetd.logs import AccessLog, request_id_var
from budgetd.metrics import Metrics
from budgetd.tracing import Tracing

_access = AccessLog()

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
}
_PREFIXES = (
    # The gateway's Anthropic paths: messages, count_tokens, batches, models.
    ("/v1/messages", "gateway"),
    ("/v1/models", "gateway"),
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
    # 128 random bits as 32 hex digits, like uuid4().hex, at a quarter of its CPU (issue 13).
    return os.urandom(16).hex()


class Observed:
    """ASGI app: ``app`` with every HTTP request measured, id'd, logged and (optionally) traced."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        *,
        access_log: bool = True,
        tracing: Tracing | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self.tracing = tracing

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        rid = _request_id(scope["headers"])
        rid_header = (REQUEST_ID_HEADER, rid.encode("latin-1"))
        route = route_of(scope["path"])
        status = 500

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        token = request_id_var.set(rid)
        try:
            if self.tracing is None:
                await self.app(scope, receive, send_with_id)
            else:
                with self.tracing.server_span(scope, route, rid) as span:
                    await self.app(scope, receive, send_with_id)
                    span.set_attribute("http.response.status_code", status)
        finally:
            elapsed = time.perf_counter() - started
            outcome = outcome_of(status)
            self.metrics.observe_request(route, outcome, elapsed)
            if self.access_log and _access.enabled():
                method, path = scope["method"], scope["path"]
                _access.write(
                    {
                        "method": method,
                        "path": path,
                        "route": route,
                        "status": status,
                        "outcome": outcome,
                        "duration_ms": round(elapsed * 1000, 3),
                        "client": scope["client"][0] if scope.get("client") else None,
                        "message": f"{method} {path} {status}",
                    }
                )
            request_id_var.reset(token)
