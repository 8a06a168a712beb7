"""Errors → RFC 9457 problem+json, each with a stable ``type``."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from budgetd.contract import Denied
from budgetd.errors import BudgetdError, Conflict

TYPE_BASE = "https://budgetd.dev/problems/"
PROBLEM_JSON = "application/problem+json"


def problem(status: int, slug: str, title: str, detail: str, **extra: Any) -> Response[Any]:
    body = {"type": TYPE_BASE + slug, "title": title, "status": status, "detail": detail}
    body.update({k: v for k, v in extra.items() if v is not None})
    headers = {}
    if "retry_after_s" in extra and extra["retry_after_s"] is not None:
        headers["Retry-After"] = str(extra["retry_after_s"])
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def denied(result: Denied) -> Response[Any]:
    names = ", ".join(f"{s.scope} {s.kind} {s.name!r} ({s.entity})" for s in result.scopes)
    return problem(
        429,
        "budget-exceeded",
        "Budget or rate limit exceeded",
        f"denied by {names}",
        scopes=result.scopes,
        retry_after_s=result.retry_after_s,
    )


def on_budgetd_error(_: Request[Any, Any, Any], exc: BudgetdError) -> Response[Any]:
    title = exc.type_slug.replace("-", " ").capitalize()
    state = exc.state if isinstance(exc, Conflict) else None
    return problem(exc.status, exc.type_slug, title, exc.detail, field=exc.field, state=state)


def on_validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    errors = exc.extra if isinstance(exc.extra, list) else []
    fields = [str(e.get("key")) for e in errors if isinstance(e, dict) and e.get("key")]
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


def on_http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    return problem(exc.status_code, slug, str(exc.detail), str(exc.detail))


HANDLERS = {
    BudgetdError: on_budgetd_error,
    ValidationException: on_validation_error,
    HTTPException: on_http_error,
}
