"""Budget against actual: each budget's limit, spent, held and projected end-of-period spend.

Org budgets are one entity each; the budgets of other scopes (user, feature, team, key, tag)
are reported for the entities that spent most this month (from the aggregates), so an org of
100,000 users is not a scan."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, cast

import msgspec

from budgetd import contract as c
from budgetd import counters
from budgetd.engine import Engine
from budgetd.policy.model import BudgetRule
from budgetd.policy.resolve import AppliedBudget, entity_budget
from budgetd.reports.fold import VIEWS, View
from budgetd.store import keys
from budgetd.store.scripted import ScriptStore

TOP = 20


class BudgetRow(msgspec.Struct, frozen=True, kw_only=True):
    budget: str
    scope: str
    entity: str
    mode: str
    period: str
    period_start: datetime | None
    period_end: datetime | None
    limit_micros: int
    spent_micros: int
    held_micros: int
    remaining_micros: int
    used_pct: float
    projected_micros: int | None
    """Spent + held + the period-to-date spend rate × the time left (calendar periods only)."""
    thresholds_pct: list[int]


class BudgetsReport(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    at: datetime
    rows: list[BudgetRow]


def project(spent: int, held: int, start: datetime, end: datetime, now: datetime) -> int:
    """Linear end-of-period spend: what the period has spent so far, per second, until its end."""
    elapsed = (now - start).total_seconds()
    left = max(0.0, (end - now).total_seconds())
    if elapsed <= 0:
        return spent + held
    return spent + held + round(spent / elapsed * left)


async def _top_entities(
    store: ScriptStore, org: str, view: View, month: str, top: int
) -> list[str]:
    names: Any = await store.client.zrevrange(keys.report_rank(org, view, f"m:{month}"), 0, top - 1)
    return [str(n) for n in names]


def _row(
    rule: BudgetRule | None,
    scope: c.ScopeState | counters.Counter,
    now: datetime,
) -> BudgetRow:
    """One row, from a subject's budgets view or from a counter the report named."""
    start: datetime | None
    end: datetime | None
    if isinstance(scope, counters.Counter):
        a = scope.applied
        name, kind, entity, mode = a.rule.name, a.rule.scope, a.entity, a.rule.mode
        text = a.rule.period.text
        limit, spent, held = a.limit, scope.spent, scope.held
        start, end = scope.window.start, scope.window.end
    else:
        name, kind, entity, mode = scope.name, scope.scope, scope.entity, scope.mode
        text = scope.period or ""
        limit, spent, held = scope.limit, scope.spent_micros or 0, scope.held_micros or 0
        start, end = scope.period_start, scope.period_end
    projected = (
        project(spent, held, start, end, now)
        if rule is not None and rule.period.calendar and start is not None and end is not None
        else None
    )
    return BudgetRow(
        budget=name,
        scope=kind,
        entity=entity,
        mode=mode,
        period=text,
        period_start=start,
        period_end=end,
        limit_micros=limit,
        spent_micros=spent,
        held_micros=held,
        remaining_micros=max(0, limit - spent - held),
        used_pct=round(100 * (spent + held) / limit, 1) if limit else 0.0,
        projected_micros=projected,
        thresholds_pct=list(rule.thresholds_pct) if rule is not None else [],
    )


async def rows_for(
    engine: Engine, org: str, user: str | None, feature: str | None, only_scope: str | None = None
) -> list[BudgetRow]:
    """The budget rows that apply to one subject (``only_scope``: of that scope only)."""
    policy = engine.policy(org)
    now = engine.clock.now()
    rules = {rule.name: rule for rule in policy.budgets}
    view = await engine.budgets(org, user, feature, None)
    return [
        _row(rules.get(s.name), s, now)
        for s in view.scopes
        if s.kind == "budget" and (only_scope is None or s.scope == only_scope)
    ]


async def budgets(engine: Engine, store: ScriptStore, org: str, top: int = TOP) -> BudgetsReport:
    """Every budget's counter for the org, and for each other scope's ``top`` spenders of the
    month (by the aggregates of that scope's view: users, features, teams, keys, tags)."""
    policy = engine.policy(org)
    now = engine.clock.now()
    month = f"{now.astimezone(policy.tz):%Y-%m}"
    ranked: dict[str, list[str]] = {}
    applied: list[AppliedBudget] = []
    for rule in policy.budgets:
        if rule.scope == "org":
            entities = [org]
        elif rule.scope in VIEWS:
            if rule.scope not in ranked:
                view = cast(View, rule.scope)
                ranked[rule.scope] = await _top_entities(store, org, view, month, top)
            entities = ranked[rule.scope]
        else:
            entities = []
        applied += [a for e in entities if (a := entity_budget(policy, rule, e)) is not None]
    rows = [_row(c.applied.rule, c, now) for c in await counters.read(engine, policy, applied, now)]
    return BudgetsReport(org=org, at=now, rows=rows)


def today(engine: Engine, org: str) -> date:
    """The org's current day, in its time zone."""
    return engine.clock.now().astimezone(engine.policy(org).tz).date()
