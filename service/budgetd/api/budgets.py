"""Read-only views: budgets of a scope, and the cost of a usage object."""

from __future__ import annotations

from litestar import get, post

from budgetd.api.deps import AnyRequest, caller, engine_of
from budgetd.api.openapi import Operation
from budgetd.api.validation import convert_query, decode
from budgetd.contract import BudgetsQuery, BudgetsResult, CostRequest, CostResult


@get("/v1/budgets", summary="Each limit that applies to a scope: limit, spent, held, remaining")
async def budgets(request: AnyRequest) -> BudgetsResult:
    principal = caller(request)
    q = convert_query(request.query_params.items(), BudgetsQuery)
    principal.require_org(q.org)
    tags = tuple(q.tags.split(",")) if q.tags else ()
    return await engine_of(request).budgets(
        q.org, q.user, q.feature, q.model, key=principal.key, tags=tags, session=q.session
    )


@post("/v1/cost", status_code=200, summary="The cost of a usage object, recorded nowhere")
async def price(request: AnyRequest) -> CostResult:
    principal = caller(request)  # a key is needed even without an org: prices are not public
    data = decode(await request.body(), CostRequest)
    if data.org is not None:
        principal.require_org(data.org)
    return engine_of(request).price(data)


ROUTES = [budgets, price]
OPERATIONS = [
    Operation(
        "GET",
        "/v1/budgets",
        "Each limit that applies to a scope: limit, spent, held, remaining",
        "budgets",
        ok=(200, BudgetsResult),
        query=BudgetsQuery,
        problems=(403, 404, 422, 503),
        tags=("budgets",),
    ),
    Operation(
        "POST",
        "/v1/cost",
        "The cost of a usage object, recorded nowhere",
        "cost",
        ok=(200, CostResult),
        body=CostRequest,
        problems=(403, 404, 422),
        tags=("budgets",),
    ),
]
