"""budgetd's answers as the Anthropic SDK's own errors, so an app catches them where it
already catches Anthropic's.

A denial is :class:`BudgetExceededError`: an ``anthropic.RateLimitError`` (429) *and* a
:class:`budgetd_client.BudgetExceeded` (``.scopes``, ``.retry_after``), built from a synthetic
429 response whose body has Anthropic's error shape with the denying scopes in the message.
Why a 429 and not a new exception type: an app that already handles Anthropic's rate limits
(back off, show "try later", fall back to a cheaper model) handles budgetd's the same way with
no new code, and code written for the old guard (``except BudgetExceeded``) keeps working.

The response says ``x-should-retry: false``: the SDK must not retry a denial on its own (the
same reserve would be denied again, and a budget period is no reason to block for a minute);
``retry-after`` is there for the app. ``.type`` and ``.body`` are Anthropic's (the error
type and JSON body); budgetd's problem document is ``.problem``.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2

from budgetd_client.errors import BudgetdError, BudgetExceeded, ServiceUnavailable


def error_body(kind: str, message: str, problem: dict[str, Any] | None = None) -> dict[str, Any]:
    """An Anthropic API error body; budgetd's problem document rides along under ``budgetd``."""
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    if problem:
        body["budgetd"] = problem
    return body


def _response(
    request: httpx2.Request, status: int, body: dict[str, Any], retry_after: int | None
) -> httpx2.Response:
    headers = {"x-should-retry": "false"}
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    return httpx2.Response(status, headers=headers, json=body, request=request)


def scopes_text(denied: BudgetExceeded) -> str:
    named = [f"{s.name} ({s.scope} {s.entity})" for s in denied.scopes]
    return ", ".join(named) or "a budget"


# Both bases define .type and .body; Anthropic's win (see the module docstring).
class BudgetExceededError(anthropic.RateLimitError, BudgetExceeded):  # type: ignore[misc]
    """budgetd denied the call; nothing was sent to Anthropic and nothing is held."""

    def __init__(self, denied: BudgetExceeded, request: httpx2.Request) -> None:
        message = f"budgetd: budget exceeded: {scopes_text(denied)}. {denied.detail}"
        body = error_body("rate_limit_error", message, denied.body)
        anthropic.RateLimitError.__init__(
            self,
            message,
            response=_response(request, 429, body, denied.retry_after),
            body=body,
        )
        self.detail = denied.detail
        self.status = 429
        self.scopes = denied.scopes
        self.retry_after = denied.retry_after
        self.problem = denied.body


def _status_error(
    cls: type[anthropic.APIStatusError], error: BudgetdError, request: httpx2.Request
) -> anthropic.APIStatusError:
    status = error.status if error.status and error.status >= 400 else 503
    kind = "api_error" if status >= 500 else "invalid_request_error"
    message = f"budgetd: {error.detail}"
    body = error_body(kind, message, error.body or None)
    built = cls(message, response=_response(request, status, body, None), body=body)
    built.detail = error.detail  # type: ignore[attr-defined]
    built.status = status  # type: ignore[attr-defined]
    built.budgetd_error = error  # type: ignore[attr-defined]
    return built


class BudgetdUnavailableError(anthropic.APIStatusError, ServiceUnavailable):  # type: ignore[misc]
    """budgetd could not decide (unreachable with ``fail_mode="closed"``, or its store is down
    and a fail-closed limit applies): no call was made. Also a ``ServiceUnavailable``."""

    budgetd_error: BudgetdError


class BudgetdRefusedError(anthropic.APIStatusError):
    """budgetd refused the reserve (an unknown model, a bad key…): no call was made.
    ``.budgetd_error`` is the client's typed error (``UnknownModel``, ``Unauthorized``…)."""

    budgetd_error: BudgetdError


def as_anthropic_error(error: BudgetdError, request: httpx2.Request) -> anthropic.APIStatusError:
    """The SDK error an app sees for budgetd's answer to a reserve."""
    if isinstance(error, BudgetExceeded):
        return BudgetExceededError(error, request)
    if isinstance(error, ServiceUnavailable):
        unavailable = _status_error(BudgetdUnavailableError, error, request)
        unavailable.unreachable = error.unreachable  # type: ignore[attr-defined]
        return unavailable
    return _status_error(BudgetdRefusedError, error, request)


def refused_response(request: httpx2.Request, message: str, field: str) -> httpx2.Response:
    """A 400 in Anthropic's shape for a budgeted request budgetd cannot read (it is not sent)."""
    body = error_body("invalid_request_error", f"budgetd: {field}: {message}")
    return _response(request, 400, body, None)
