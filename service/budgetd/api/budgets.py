"""Read-only views: budgets of a scope, and the cost of a usage object."""

from __future__ import annotations

from litestar import get, post
from litestar.params import FromQuery, JSONBody

from budgetd.api.deps import Caller, EngineDep
from budgetd.contract import BudgetsResult, CostRequest, CostResult


@get("/v1/budgets", summary="Each limit that applies to a scope: limit, spent, held, remaining")
async def budgets(
    engine: EngineDep,
    principal: Caller,
    org: FromQuery[str],
    user: FromQuery[str | None] = None,
    feature: FromQuery[str | None] = None,
    model: FromQuery[str | None] = None,
) -> BudgetsResult:
    principal.require_org(org)
    return await engine.budgets(org, user, feature, model)


@post("/v1/cost", status_code=200, summary="The cost of a usage object, recorded nowhere")
async def price(data: JSONBody[CostRequest], engine: EngineDep, principal: Caller) -> CostResult:
    if data.org is not None:
        principal.require_org(data.org)
    return engine.price(data)


ROUTES = [budgets, price]
