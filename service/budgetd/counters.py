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

CHUNK = 200
"""Counters read by one status script (and their windows worked out between two turns of the
event loop: ~10 µs each). A forecast reads every user that spent in the last hour
(thousands at a large org): in one script that held Redis for tens of ms, and with ~18,000
(bench/job_stalls.py) the script failed outright (Lua's unpack limit)."""


class Counter(msgspec.Struct, frozen=True, kw_only=True):
    applied: AppliedBudget
    window: PeriodWindow
    spent: int
    held: int


async def read(
    engine: Engine, policy: OrgPolicy, applied: list[AppliedBudget], now: datetime
) -> list[Counter]:
    """Each applied budget's counter in its window containing ``now``, ``CHUNK`` to a store
    call."""
    out: list[Counter] = []
    for start in range(0, len(applied), CHUNK):
        part = applied[start : start + CHUNK]
        windows = [window(a.rule.period, policy.tz, now) for a in part]
        slots = tuple(engine.budget_slot(policy, a, w) for a, w in zip(part, windows, strict=True))
        status = await engine.store.status(slots, ())
        out += [
            Counter(applied=a, window=w, spent=spent, held=held)
            for a, w, (spent, held) in zip(part, windows, status.budgets, strict=True)
        ]
    return out
