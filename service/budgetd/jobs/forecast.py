"""Burn-rate forecast: project each calendar budget's spend to the end of its period from the
recent rate, and warn once per period when the projection crosses the limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from budgetd import counters
from budgetd.engine import Engine
from budgetd.jobs.spend import entities_of
from budgetd.jobs.spend import since as spend_since
from budgetd.money import format_usd
from budgetd.pacing import paced
from budgetd.periods import COUNTER_GRACE
from budgetd.policy.resolve import entity_budget
from budgetd.store.events import EventQueue

RATE_WINDOW = timedelta(hours=1)


async def forecast(engine: Engine, queue: EventQueue, org: str, now: datetime) -> int:
    """Emit a forecast event for every (budget, entity) on course to exceed its limit this
    period; returns how many were newly emitted."""
    policy = engine.policy(org)
    since = now - RATE_WINDOW
    spends = await spend_since(queue.store, org, int(since.timestamp() * 1000))
    emitted = 0
    for rule in policy.budgets:
        if rule.period.calendar is None or not rule.forecast:
            continue
        recent: dict[str, int] = {}
        async for s in paced(spends):
            for entity in entities_of(s, rule, policy):
                recent[entity] = recent.get(entity, 0) + s.cost
        applied = [
            a async for e in paced(recent) if (a := entity_budget(policy, rule, e)) is not None
        ]
        for c in await counters.read(engine, policy, applied, now):
            entity, limit, win = c.applied.entity, c.applied.limit, c.window
            end = win.end
            if end is None:  # a session: no period end (only calendar periods get here)
                continue
            used = c.spent + c.held
            rate = recent[entity] / RATE_WINDOW.total_seconds()  # micros per second
            left = (end - now).total_seconds()
            if used >= limit or rate <= 0 or used + rate * left <= limit:
                continue
            runs_out = now + timedelta(seconds=(limit - used) / rate)
            local = runs_out.astimezone(policy.tz)
            fields = {
                "type": "forecast",
                "budget": rule.name,
                "scope": rule.scope,
                "entity": entity,
                "period": win.charge_id,
                "used_micros": str(used),
                "limit_micros": str(limit),
                "runs_out_at": runs_out.astimezone(UTC).isoformat(timespec="seconds"),
                "period_end_ms": str(int(end.timestamp() * 1000)),
                "summary": (
                    f"{rule.scope} {entity}: at this rate budget '{rule.name}' "
                    f"({format_usd(used)} of {format_usd(limit)}) runs out "
                    f"{local:%A %H:%M} {policy.timezone}"
                ),
                "at_ms": str(int(now.timestamp() * 1000)),
            }
            keep = (end - now) + COUNTER_GRACE
            event_id = f"forecast|{rule.name}|{entity}|{win.charge_id}"
            if await queue.emit(org, event_id, keep, fields):
                emitted += 1
    return emitted
