"""Reserve, commit, release, and reservation-less usage."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Response, post
from litestar.params import FromQuery, JSONBody, PathParameter

from budgetd.api.deps import AnyRequest, caller, engine_of, org_of
from budgetd.api.problems import denied
from budgetd.contract import (
    CommitRequest,
    CommitResult,
    Denied,
    Grant,
    RecordResult,
    ReleaseResult,
    ReserveRequest,
    UsageRequest,
)

ReservationId = Annotated[
    str, PathParameter(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,255}$", title="reservation id")
]


@post("/v1/reservations", status_code=201, summary="Reserve the worst-case cost of a call")
async def reserve(data: JSONBody[ReserveRequest], request: AnyRequest) -> Response[Any]:
    caller(request).require_org(data.org)
    result = await engine_of(request).reserve(data)
    if isinstance(result, Denied):
        return denied(result)
    # A replay answers exactly as the original did (201), flagged ``replayed``.
    return Response[Grant](result, status_code=201)


@post(
    "/v1/reservations/{reservation_id:str}/commit",
    status_code=200,
    summary="Settle the actual cost from the response's usage",
)
async def commit(
    reservation_id: ReservationId,
    data: JSONBody[CommitRequest],
    request: AnyRequest,
    org: FromQuery[str | None] = None,
) -> CommitResult:
    return await engine_of(request).commit(org_of(caller(request), org), reservation_id, data)


@post(
    "/v1/reservations/{reservation_id:str}/release",
    status_code=200,
    summary="Void the hold (the call failed)",
)
async def release(
    reservation_id: ReservationId,
    request: AnyRequest,
    org: FromQuery[str | None] = None,
) -> ReleaseResult:
    return await engine_of(request).release(org_of(caller(request), org), reservation_id)


@post("/v1/usage", status_code=201, summary="Record a call made without a reservation")
async def record_usage(data: JSONBody[UsageRequest], request: AnyRequest) -> Response[Any]:
    caller(request).require_org(data.org)
    result = await engine_of(request).record(data)
    return Response[RecordResult](result, status_code=201)


ROUTES = [reserve, commit, release, record_usage]
