"""Answers in Anthropic's error shape, ``{"type": "error", "error": {"type", "message"}}``, so
that the SDKs raise their usual typed errors (``RateLimitError``, ``BadRequestError``, …) and
Claude Code prints the message. Every message budgetd writes starts with ``budgetd:`` and names
the scope, so a person can tell our refusal from Anthropic's."""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from budgetd.contract import Denied, DeniedScope
from budgetd.errors import BudgetdError
from budgetd.money import format_usd

Headers = list[tuple[bytes, bytes]]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "api_error",
    529: "overloaded_error",
}
SDK_PATIENCE_S = 60
"""The SDKs honour ``retry-after`` up to a minute; past that they would retry blindly, so a
denial that waiting cannot cure soon says ``x-should-retry: false``."""


class Reply(NamedTuple):
    status: int
    headers: Headers
    body: bytes


def error(status: int, message: str, headers: Headers | None = None) -> Reply:
    body = msgspec.json.encode(
        {"type": "error", "error": {"type": _TYPES[status], "message": message}}
    )
    return Reply(
        status,
        [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            *(headers or []),
        ],
        body,
    )


def _scope_text(s: DeniedScope) -> str:
    """``user budget 'daily' (user alice): limit $5.000000, spent $4.990000, held $0.000000,
    this call may cost up to $0.020000``: which scope, and the figures that decided."""
    what = f"{s.scope} {s.kind} {s.name!r} ({s.scope} {s.entity})"
    if s.kind == "budget":
        figures = [f"limit {format_usd(s.limit)}"]
        if s.spent_micros is not None:
            figures.append(f"spent {format_usd(s.spent_micros)}")
        if s.held_micros is not None:
            figures.append(f"held {format_usd(s.held_micros)}")
        figures.append(f"this call may cost up to {format_usd(s.requested)}")
        return f"{what}: {', '.join(figures)}"
    return f"{what}: limit {s.limit} per minute, this call needs {s.requested}"


def denial(result: Denied) -> Reply:
    """429 ``rate_limit_error`` with ``retry-after`` when waiting helps; 400
    ``invalid_request_error`` when the call exceeds a whole limit (as Anthropic answers a
    request that can never fit), which no SDK retries."""
    scopes = "; ".join(_scope_text(s) for s in result.scopes)
    if result.retry_after_s is None:
        return error(400, f"budgetd: this call can never fit: {scopes}")
    wait = result.retry_after_s
    headers = [(b"retry-after", b"%d" % wait)]
    if wait > SDK_PATIENCE_S:
        headers.append((b"x-should-retry", b"false"))
    return error(429, f"budgetd: budget exceeded: {scopes} (retry after {wait} s)", headers)


def from_budgetd(exc: BudgetdError) -> Reply:
    status = {422: 400, 404: 403, 409: 400}.get(exc.status, exc.status)
    field = f" (field {exc.field})" if exc.field else ""
    headers = [(b"retry-after", b"1")] if exc.status == 503 else None
    return error(status, f"budgetd: {exc.detail}{field}", headers)
