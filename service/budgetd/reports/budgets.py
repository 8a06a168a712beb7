"""Budget against actual: each budget's limit, spent, held and projected end-of-period spend.

Org budgets are one entity each; feature and user budgets are reported for the entities that
spent most this month (from the aggregates), so an org of 100,000 users is not a scan."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import msgspec

from budgetd.engine import Engine
from budgetd.reports.fold import View
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


async def rows_for(
    engine: Engine, org: str, user: str | None, feature: str | None, only_scope: str | None = None
) -> list[BudgetRow]:
    """The budget rows that apply to one subject (``only_scope``: of that scope only)."""
    policy = engine.policy(org)
    now = engine.clock.now()
    rules = {rule.name: rule for rule in policy.budgets}
    view = await engine.budgets(org, user, feature, None)
    rows: list[BudgetRow] = []
    for s in view.scopes:
        if s.kind != "budget" or (only_scope is not None and s.scope != only_scope):
            continue
        rule = rules.get(s.name)
        spent, held = s.spent_micros or 0, s.held_micros or 0
        projected = (
            project(spent, held, s.period_start, s.period_end, now)
            if rule is not None and rule.period.calendar and s.period_start and s.period_end
            else None
        )
        rows.append(
            BudgetRow(
                budget=s.name,
                scope=s.scope,
                entity=s.entity,
                mode=s.mode,
                period=s.period or "",
                period_start=s.period_start,
                period_end=s.period_end,
                limit_micros=s.limit,
                spent_micros=spent,
                held_micros=held,
                remaining_micros=s.remaining,
                used_pct=round(100 * (spent + held) / s.limit, 1) if s.limit else 0.0,
                projected_micros=projected,
                thresholds_pct=list(rule.thresholds_pct) if rule is not None else [],
            )
        )
    return rows


async def budgets(engine: Engine, store: ScriptStore, org: str, top: int = TOP) -> BudgetsReport:
    policy = engine.policy(org)
    now = engine.clock.now()
    month = f"{now.astimezone(policy.tz):%Y-%m}"
    subjects: list[tuple[str | None, str | None]] = [(None, None)]
    scopes_in_use = {rule.scope for rule in policy.budgets}
    if "feature" in scopes_in_use:
        subjects += [(None, f) for f in await _top_entities(store, org, "feature", month, top)]
    if "user" in scopes_in_use:
        subjects += [(u, None) for u in await _top_entities(store, org, "user", month, top)]
    rows: list[BudgetRow] = []
    seen: set[tuple[str, str]] = set()
    for user, feature in subjects:
        for row in await rows_for(engine, org, user, feature):
            if (row.budget, row.entity) not in seen:
                seen.add((row.budget, row.entity))
                rows.append(row)
    return BudgetsReport(org=org, at=now, rows=rows)


def today(engine: Engine, org: str) -> date:
    """The org's current day, in its time zone."""
    return engine.clock.now().astimezone(engine.policy(org).tz).date()
