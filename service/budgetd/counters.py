"""The live counters of named (budget, entity) pairs, for the jobs and the reports.

``Engine.budgets`` answers for a subject (a caller: its user, feature, key); the jobs and the
reports start from an entity a ledger entry or a ranking named instead (a team, a tag, a key),
for which there is no subject to ask about. Both read the same slots (``Engine.budget_slot``)
with the same status script."""

from __future__ import annotations

from datetime import datetime

import msgspec

from budgetd.engine import Engine
from budgetd.periods import PeriodWindow, window
from budgetd.policy.model import OrgPolicy
from budgetd.policy.resolve import AppliedBudget


class Counter(msgspec.Struct, frozen=True, kw_only=True):
    applied: AppliedBudget
    window: PeriodWindow
    spent: int
    held: int


async def read(
    engine: Engine, policy: OrgPolicy, applied: list[AppliedBudget], now: datetime
) -> list[Counter]:
    """Each applied budget's counter in its window containing ``now``, in one store call."""
    if not applied:
        return []
    windows = [window(a.rule.period, policy.tz, now) for a in applied]
    slots = tuple(engine.budget_slot(policy, a, w) for a, w in zip(applied, windows, strict=True))
    status = await engine.store.status(slots, ())
    return [
        Counter(applied=a, window=w, spent=spent, held=held)
        for a, w, (spent, held) in zip(applied, windows, status.budgets, strict=True)
    ]
