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
from budgetd.jobs.spend import Spend, entities_of
from budgetd.money import format_usd
from budgetd.pacing import STEP
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


class _Tally:
    """One rule's sums over the period's records, as they stream past."""

    def __init__(self) -> None:
        self.spent = 0
        self.overruns = 0
        self.by_entity: Counter[str] = Counter()
        self.by: dict[str, Counter[str]] = {a: Counter() for a in ("user", "feature", "model")}

    def add(self, record: Spend, entities: tuple[str, ...]) -> None:
        self.spent += record.cost
        self.overruns += record.overrun
        self.by_entity.update(dict.fromkeys(entities, record.cost))
        for attribute, totals in self.by.items():
            if key := getattr(record, attribute):
                totals[key] += record.cost


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
    rules = [rule for rule in policy.budgets if rule.period.calendar == unit]
    if not rules:
        return 0
    tallies = [_Tally() for _ in rules]
    every = max(1, STEP // len(rules))  # records resolved between two turns
    # One pass, each record tallied for every rule and then let go: a month's records are
    # ~115,000 at a large org (kept in a list, freeing them at the end stopped the loop 25 ms).
    n = 0
    async for s in spend.stream(queue.store, org, start_ms, end_ms):
        for rule, tally in zip(rules, tallies, strict=True):
            entities = entities_of(s, rule, policy)
            if entities:
                tally.add(s, entities)
        n += 1
        if n % every == 0:
            await asyncio.sleep(0)
    emitted = 0
    for rule, tally in zip(rules, tallies, strict=True):
        spent = tally.spent
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
            "top_entities": await _top(tally.by_entity) if rule.scope != "org" else "[]",
            "top_users": await _top(tally.by["user"]),
            "top_features": await _top(tally.by["feature"]),
            "top_models": await _top(tally.by["model"]),
            "overruns": str(tally.overruns),
            "summary": summary,
            "at_ms": str(end_ms),
        }
        keep = (end - start) + COUNTER_GRACE
        if await queue.emit(org, f"close|{rule.name}|{period_id}", keep, fields):
            emitted += 1
    return emitted
