"""Read-only views: budgets of a scope, and the cost of a usage object."""

from __future__ import annotations

from litestar import get, post
from litestar.params import Parameter

from budgetd.auth import Principal
from budgetd.contract import BudgetsResult, CostRequest, CostResult
from budgetd.engine import Engine


@get("/v1/budgets", summary="Each limit that applies to a scope: limit, spent, held, remaining")
async def budgets(engine: Engine, principal: Principal, org: str,
                  user: str | None = Parameter(query="user", default=None),
                  feature: str | None = Parameter(query="feature", default=None),
                  model: str | None = Parameter(query="model", default=None)) -> BudgetsResult:
    principal.require_org(org)
    return await engine.budgets(org, user, feature, model)


@post("/v1/cost", status_code=200, summary="The cost of a usage object, recorded nowhere")
async def price(data: CostRequest, engine: Engine, principal: Principal) -> CostResult:
    if data.org is not None:
        principal.require_org(data.org)
    return engine.price(data)


ROUTES = [budgets, price]
