"""At each period end in the org's zone: one summary event per calendar budget, exactly once."""

from __future__ import annotations

import asyncio
import heapq
from collections import Counter
from datetime import datetime, timedelta
from itertools import islice
from operator import itemgetter

import msgspec

from budgetd.engine import Engine
from budgetd.jobs import spend
from budgetd.jobs.spend import entities_of, totals_by
from budgetd.money import format_usd
from budgetd.pacing import paced
from budgetd.periods import COUNTER_GRACE, calendar_bounds
from budgetd.policy.model import CalendarUnit
from budgetd.store import keys
from budgetd.store.base import BudgetSlot
from budgetd.store.events import EventQueue

TOP = 5


TOP_CHUNK = 1000
"""Totals ranked between two turns of the event loop (a month's users: ~100,000, which
``most_common`` ranked in one go: ~6 ms, two such lists a user rule)."""


async def _top(totals: Counter[str]) -> str:
    """The ``TOP`` biggest as ``most_common`` gives them (ties: the first counted first):
    ``nlargest`` is a stable sort's head, and the best so far go before each next chunk."""
    best: list[tuple[str, int]] = []
    items = iter(totals.items())
    while chunk := list(islice(items, TOP_CHUNK)):
        best = heapq.nlargest(TOP, best + chunk, key=itemgetter(1))
        await asyncio.sleep(0)
    return msgspec.json.encode(best).decode()


async def _counter(engine: Engine, org: str, budget: str, period_id: str) -> int:
    key = keys.counters(org, period_id)
    slot = BudgetSlot(
        field=keys.budget_field(budget, org),
        counter_key=key,
        held_key=key,
        limit=0,
        mode="block",
        expire_at_ms=0,
    )
    status = await engine.store.status((slot,), ())
    return status.budgets[0][0]


async def close_periods(
    engine: Engine, queue: EventQueue, org: str, unit: CalendarUnit, fired_at: datetime
) -> int:
    """Summarise the ``unit`` periods of ``org`` that ended at ``fired_at``; returns how many
    summary events were newly emitted (0 when another replica already did)."""
    policy = engine.policy(org)
    period_id, start, end = calendar_bounds(unit, policy.tz, fired_at - timedelta(seconds=1))
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    spends = await spend.since(queue.store, org, start_ms, end_ms)
    emitted = 0
    for rule in policy.budgets:
        if rule.period.calendar != unit:
            continue
        by_entity: Counter[str] = Counter()
        mine = []
        spent = 0
        async for s in paced(spends):  # a month of entries: seconds of Python, in steps
            entities = entities_of(s, rule, policy)
            if entities:
                mine.append(s)
                spent += s.cost
                by_entity.update(dict.fromkeys(entities, s.cost))
        if rule.scope == "org":
            # The counter, not the ledger: a commit settles into its hold's period, which the
            # ledger's timestamps (commit time) cannot tell.
            spent = await _counter(engine, org, rule.name, period_id)
        summary = (
            f"{rule.scope} budget '{rule.name}' closed period {period_id}: "
            f"{format_usd(spent)} spent"
        )
        if rule.scope == "org":
            summary += f" of {format_usd(rule.default_limit)}"
        fields = {
            "type": "period_close",
            "budget": rule.name,
            "scope": rule.scope,
            "entity": org if rule.scope == "org" else "*",
            "period": period_id,
            "used_micros": str(spent),
            "limit_micros": str(rule.default_limit),
            "top_entities": await _top(by_entity) if rule.scope != "org" else "[]",
            "top_users": await _top(await totals_by(mine, "user")),
            "top_features": await _top(await totals_by(mine, "feature")),
            "top_models": await _top(await totals_by(mine, "model")),
            "overruns": str(sum(s.overrun for s in mine)),
            "summary": summary,
            "at_ms": str(end_ms),
        }
        keep = (end - start) + COUNTER_GRACE
        if await queue.emit(org, f"close|{rule.name}|{period_id}", keep, fields):
            emitted += 1
    return emitted
