"""Read-only views: budgets of a scope, and the cost of a usage object."""

from __future__ import annotations

from litestar import get, post
from litestar.params import FromQuery, JSONBody

from budgetd.api.deps import AnyRequest, caller, engine_of
from budgetd.contract import BudgetsResult, CostRequest, CostResult


@get("/v1/budgets", summary="Each limit that applies to a scope: limit, spent, held, remaining")
async def budgets(
    request: AnyRequest,
    org: FromQuery[str],
    user: FromQuery[str | None] = None,
    feature: FromQuery[str | None] = None,
    model: FromQuery[str | None] = None,
) -> BudgetsResult:
    caller(request).require_org(org)
    return await engine_of(request).budgets(org, user, feature, model)


@post("/v1/cost", status_code=200, summary="The cost of a usage object, recorded nowhere")
async def price(data: JSONBody[CostRequest], request: AnyRequest) -> CostResult:
    if data.org is not None:
        caller(request).require_org(data.org)
    return engine_of(request).price(data)


ROUTES = [budgets, price]
