"""Typed errors, one per problem ``type`` the service answers with (RFC 9457)."""

from __future__ import annotations

from typing import Any

import msgspec

from budgetd_client.types import DeniedScope

TYPE_BASE = "https://budgetd.dev/problems/"


class BudgetdError(Exception):
    """Any error answered by budgetd, or met on the way to it."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        type: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.type = type
        self.body = body or {}

    @property
    def field(self) -> str | None:
        value = self.body.get("field")
        return value if isinstance(value, str) else None


class BudgetExceeded(BudgetdError):
    """A budget or rate limit denied the reservation (429). Nothing was held."""

    def __init__(
        self,
        detail: str,
        *,
        scopes: list[DeniedScope] | None = None,
        retry_after: int | None = None,
        status: int | None = 429,
        type: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, status=status, type=type, body=body)
        self.scopes = scopes or []
        self.retry_after = retry_after
        """Seconds until every denying scope may pass; None when waiting alone will not help."""


class Conflict(BudgetdError):
    """The reservation id exists with a different request, or is already resolved otherwise."""

    @property
    def state(self) -> str | None:
        value = self.body.get("state")
        return value if isinstance(value, str) else None


class NotFound(BudgetdError):
    """No such reservation (or org) in budgetd."""


class InvalidRequest(BudgetdError):
    """The request was refused as invalid (422)."""


class UnknownModel(InvalidRequest):
    """The model is not in budgetd's price table: no call is priced at $0."""


class Unauthorized(BudgetdError):
    """Missing or wrong API key (401)."""


class Forbidden(BudgetdError):
    """The key may not act on that org (403)."""


class ServiceUnavailable(BudgetdError):
    """budgetd could not decide: unreachable (after retries), or its store is down and a
    fail-closed limit applies (503 ``store-unavailable``)."""

    def __init__(
        self,
        detail: str,
        *,
        unreachable: bool = False,
        status: int | None = None,
        type: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, status=status, type=type, body=body)
        self.unreachable = unreachable
        """True when budgetd itself could not be reached (the client's fail mode applies)."""


_BY_SLUG: dict[str, type[BudgetdError]] = {
    "conflict": Conflict,
    "reservation-not-found": NotFound,
    "unknown-org": NotFound,
    "not-found": NotFound,
    "unknown-model": UnknownModel,
    "invalid-request": InvalidRequest,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
}
_BY_STATUS: dict[int, type[BudgetdError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: InvalidRequest,
}


def from_problem(status: int, body: dict[str, Any], retry_after_header: str | None) -> BudgetdError:
    """The typed error for a problem+json answer (or any non-2xx body)."""
    kind = str(body.get("type") or "")
    slug = kind.removeprefix(TYPE_BASE) if kind.startswith(TYPE_BASE) else ""
    detail = str(body.get("detail") or body.get("title") or f"HTTP {status}")
    if slug == "budget-exceeded" or status == 429:
        scopes = msgspec.convert(body.get("scopes") or [], list[DeniedScope], strict=False)
        retry = body.get("retry_after_s")
        if retry is None and retry_after_header and retry_after_header.isdigit():
            retry = int(retry_after_header)
        return BudgetExceeded(
            detail,
            scopes=scopes,
            retry_after=int(retry) if retry is not None else None,
            status=status,
            type=kind or None,
            body=body,
        )
    if slug == "store-unavailable" or status == 503:
        return ServiceUnavailable(detail, status=status, type=kind or None, body=body)
    cls = _BY_SLUG.get(slug) or _BY_STATUS.get(status) or BudgetdError
    return cls(detail, status=status, type=kind or None, body=body)
