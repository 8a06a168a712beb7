"""Reservation-less usage. Reserve, commit and release are served by ``api/fastpath.py``."""

from __future__ import annotations

from typing import Any

from litestar import Response, post

from budgetd.api.deps import AnyRequest, caller, engine_of
from budgetd.api.openapi import Operation
from budgetd.api.validation import decode
from budgetd.contract import RecordResult, UsageRequest


@post("/v1/usage", status_code=201, summary="Record a call made without a reservation")
async def record_usage(request: AnyRequest) -> Response[Any]:
    principal = caller(request)
    data = decode(await request.body(), UsageRequest)
    principal.require_org(data.org)
    result = await engine_of(request).record(data, key=principal.key)
    return Response[RecordResult](result, status_code=201)


ROUTES = [record_usage]
OPERATIONS = [
    Operation(
        "POST",
        "/v1/usage",
        "Record a call made without a reservation",
        "record_usage",
        ok=(201, RecordResult),
        body=UsageRequest,
        problems=(403, 404, 409, 422, 503),
        tags=("usage",),
    )
]
