"""The domain's error tree. Denial is a result, not an exception; these are the other outcomes
a caller must handle. The API maps each to an RFC 9457 problem with a stable type."""

from __future__ import annotations


class BudgetdError(Exception):
    """Base of every error budgetd reports to a caller."""

    type_slug = "error"
    status = 500
    field: str | None = None

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if field is not None:
            self.field = field


class InvalidRequest(BudgetdError):
    type_slug = "invalid-request"
    status = 422


class UnknownModel(InvalidRequest):
    type_slug = "unknown-model"
    field = "model"


class Retired(InvalidRequest):
    """A reservation for a model, or a modifier (fast mode, a long-context band), that the API
    no longer offers on that day; the detail gives the date and what to use instead."""

    type_slug = "retired"


class UnknownOrg(BudgetdError):
    type_slug = "unknown-org"
    status = 404
    field = "org"


class ReservationNotFound(BudgetdError):
    type_slug = "reservation-not-found"
    status = 404


class Conflict(BudgetdError):
    type_slug = "conflict"
    status = 409

    def __init__(self, detail: str, *, state: str | None = None) -> None:
        super().__init__(detail)
        self.state = state


class Unauthorized(BudgetdError):
    type_slug = "unauthorized"
    status = 401


class Forbidden(BudgetdError):
    type_slug = "forbidden"
    status = 403


class StoreDown(BudgetdError):
    """Redis could not be reached and a fail-closed limit applies."""

    type_slug = "store-unavailable"
    status = 503


class MalformedRequest(BudgetdError):
    """The body is not JSON at all."""

    type_slug = "malformed-request"
    status = 400


class PayloadTooLarge(BudgetdError):
    type_slug = "payload-too-large"
    status = 413


class UriTooLong(BudgetdError):
    type_slug = "uri-too-long"
    status = 414
