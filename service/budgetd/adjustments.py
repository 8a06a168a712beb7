"""Admin adjustments: a refund, a credit, or a charge made outside budgetd, applied to one
budget counter in its current period and written to the ledger by the same script, so
reconcile still proves conservation."""

from __future__ import annotations

import uuid

import msgspec

from budgetd import contract as c
from budgetd.engine import KEEP_RESOLVED_MS, Engine, fingerprint
from budgetd.errors import Conflict, InvalidRequest
from budgetd.periods import window
from budgetd.policy.model import BudgetRule, OrgPolicy
from budgetd.policy.resolve import AppliedBudget, entity_budget
from budgetd.store.base import AdjustCall


def _target(policy: OrgPolicy, request: c.AdjustmentRequest) -> AppliedBudget:
    rule: BudgetRule | None = next((r for r in policy.budgets if r.name == request.budget), None)
    if rule is None:
        raise InvalidRequest(
            f"org {policy.org!r} has no budget named {request.budget!r}", field="budget"
        )
    if rule.scope == "org":
        if request.entity not in (None, policy.org):
            raise InvalidRequest(
                f"budget {rule.name!r} counts for the whole org; leave entity out", field="entity"
            )
        entity = policy.org
    elif request.entity is None:
        raise InvalidRequest(
            f"budget {rule.name!r} counts per {rule.scope}: name the {rule.scope} in entity",
            field="entity",
        )
    else:
        entity = request.entity
    applied = entity_budget(policy, rule, entity)
    if applied is None:
        raise InvalidRequest(
            f"{request.entity!r} is not matched by budget {rule.name!r} ({rule.match!r})",
            field="entity",
        )
    return applied


async def adjust(engine: Engine, request: c.AdjustmentRequest, actor: str) -> c.AdjustmentResult:
    """Move the spend of one budget's current counter by ``amount_micros``; once per id."""
    if request.amount_micros == 0:
        raise InvalidRequest("an adjustment of 0 changes nothing", field="amount_micros")
    policy = engine.policy(request.org)
    applied = _target(policy, request)
    win = window(applied.rule.period, policy.tz, engine.clock.now())
    slot = engine.budget_slot(policy, applied, win)
    adjustment_id = request.adjustment_id or uuid.uuid4().hex
    scope = applied.rule.scope
    outcome = await engine.store.adjust(
        AdjustCall(
            org=request.org,
            adjustment_id=adjustment_id,
            fingerprint=fingerprint(msgspec.structs.replace(request, adjustment_id=None)),
            amount=request.amount_micros,
            keep_ms=KEEP_RESOLVED_MS,
            budget=slot,
            ledger_fields=(
                ("budget", applied.rule.name),
                ("entity", applied.entity),
                ("period", win.charge_id),
                ("reason", request.reason),
                ("by", actor),
                ("user", applied.entity if scope == "user" else ""),
                ("feature", applied.entity if scope == "feature" else ""),
            ),
        )
    )
    if outcome.status == "conflict":
        raise Conflict(f"adjustment {adjustment_id!r} exists with a different body")
    if outcome.status == "negative":
        raise InvalidRequest(
            f"a credit of {-request.amount_micros} µ$ exceeds the {outcome.spent} µ$ spent on "
            f"{applied.rule.name!r} for {applied.entity!r} in period {win.charge_id}",
            field="amount_micros",
        )
    return c.AdjustmentResult(
        adjustment_id=adjustment_id,
        ledger_id=outcome.ledger_id,
        budget=applied.rule.name,
        entity=applied.entity,
        period=outcome.period,
        amount_micros=request.amount_micros,
        spent_micros=outcome.spent,
        replayed=outcome.status == "replay",
        durability=engine.store.durability,
    )
