"""Errors → RFC 9457 problem+json, each with a stable ``type``.

A problem is built once, as a :class:`Problem` (status, body, headers), and then rendered either
as a Litestar ``Response`` (the exception handlers below) or as raw ASGI messages (the fast path
in ``api/fastpath.py``), so both paths answer with the same bytes."""

from __future__ import annotations

import logging
import re
from typing import Any, NamedTuple

import redis.exceptions
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from budgetd.contract import Denied
from budgetd.errors import BudgetdError, Conflict
from budgetd.store.base import StoreUnavailable

log = logging.getLogger("budgetd")

TYPE_BASE = "https://budgetd.dev/problems/"
PROBLEM_JSON = "application/problem+json"


class Problem(NamedTuple):
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def problem_of(status: int, slug: str, title: str, detail: str, **extra: Any) -> Problem:
    body = {"type": TYPE_BASE + slug, "title": title, "status": status, "detail": detail}
    body.update({k: v for k, v in extra.items() if v is not None})
    headers = {}
    if "retry_after_s" in extra and extra["retry_after_s"] is not None:
        headers["Retry-After"] = str(extra["retry_after_s"])
    return Problem(status, body, headers)


def denied_problem(result: Denied) -> Problem:
    names = ", ".join(f"{s.scope} {s.kind} {s.name!r} ({s.entity})" for s in result.scopes)
    return problem_of(
        429,
        "budget-exceeded",
        "Budget or rate limit exceeded",
        f"denied by {names}",
        scopes=result.scopes,
        retry_after_s=result.retry_after_s,
    )


RETRY_UNAVAILABLE_S = 1
"""``Retry-After`` of a 503: the store is checked again on the next request, so a second is as
good a guess as any and keeps clients from hammering."""


def error_problem(exc: BudgetdError) -> Problem:
    title = exc.type_slug.replace("-", " ").capitalize()
    state = exc.state if isinstance(exc, Conflict) else None
    retry = RETRY_UNAVAILABLE_S if exc.status == 503 else None
    return problem_of(
        exc.status,
        exc.type_slug,
        title,
        exc.detail,
        field=exc.field,
        state=state,
        retry_after_s=retry,
    )


def internal_error_problem() -> Problem:
    return problem_of(
        500, "internal-error", "Internal error", "an unexpected error; it is in the service's log"
    )


def method_not_allowed_problem(allowed: list[str]) -> Problem:
    methods = ", ".join(allowed)
    p = problem_of(
        405, "method-not-allowed", "Method not allowed", f"this path takes {methods} only"
    )
    return Problem(p.status, p.body, {**p.headers, "Allow": methods})


def response_of(p: Problem) -> Response[Any]:
    return Response(p.body, status_code=p.status, media_type=PROBLEM_JSON, headers=p.headers)


def problem(status: int, slug: str, title: str, detail: str, **extra: Any) -> Response[Any]:
    return response_of(problem_of(status, slug, title, detail, **extra))


def denied(result: Denied) -> Response[Any]:
    return response_of(denied_problem(result))


def on_budgetd_error(_: Request[Any, Any, Any], exc: BudgetdError) -> Response[Any]:
    return response_of(error_problem(exc))


_AT_PATH = re.compile(r" - at `\$\.([^`]+)`$")
_NAMED_FIELD = re.compile(r"Object (?:missing required|contains unknown) field `([^`]+)`")


def _field_of(error: dict[str, Any]) -> str | None:
    """The field at fault. Litestar names the whole body ``data`` when msgspec rejects it;
    msgspec's message says which field (``- at `$.usage.input_tokens```, or the missing or
    unknown key), so that is what the caller gets."""
    key = error.get("key")
    message = str(error.get("message", ""))
    if key == "data":
        at = _AT_PATH.search(message)
        named = _NAMED_FIELD.search(message)
        if at and named:
            return f"{at.group(1)}.{named.group(1)}"
        if at or named:
            return (at or named).group(1)  # type: ignore[union-attr]
    return str(key) if key else None


def on_validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    errors = exc.extra if isinstance(exc.extra, list) else []
    fields = [f for e in errors if isinstance(e, dict) and (f := _field_of(e))]
    messages = [str(e.get("message")) for e in errors if isinstance(e, dict)]
    detail = "; ".join(messages) or str(exc.detail)
    return problem(
        422,
        "invalid-request",
        "Invalid request",
        detail,
        field=fields[0] if fields else None,
        errors=errors or None,
    )


def on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Litestar's own refusals (no route, wrong method, body over its limit), as problems with
    their headers (``Allow`` on a 405); a body over the route's limit names the limit."""
    slug, title = _HTTP_PROBLEMS.get(exc.status_code, ("http-error", str(exc.detail)))
    detail = str(exc.detail)
    if exc.status_code == 413:
        limit = request.route_handler.resolve_request_max_body_size()
        detail = f"the body exceeds the {limit} bytes this route takes"
    p = problem_of(exc.status_code, slug, title, detail)
    if exc.status_code == 503:
        p.headers.setdefault("Retry-After", str(RETRY_UNAVAILABLE_S))
    return response_of(Problem(p.status, p.body, {**p.headers, **(exc.headers or {})}))


def on_store_unreachable(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Redis unreachable under a route that reads it directly (reports, audit, plan, ledger):
    503 ``store-unavailable`` like every engine call, never a 500."""
    return response_of(error_problem(StoreUnavailable(f"redis unreachable: {type(exc).__name__}")))


def on_internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return response_of(internal_error_problem())


_HTTP_PROBLEMS = {
    400: ("malformed-request", "Malformed request"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("payload-too-large", "Payload too large"),
}


HANDLERS = {
    BudgetdError: on_budgetd_error,
    ValidationException: on_validation_error,
    HTTPException: on_http_error,
    redis.exceptions.ConnectionError: on_store_unreachable,
    redis.exceptions.TimeoutError: on_store_unreachable,
    redis.exceptions.ClusterError: on_store_unreachable,  # CLUSTERDOWN during a failover
    Exception: on_internal_error,
}
