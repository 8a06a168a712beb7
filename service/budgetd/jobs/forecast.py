"""Burn-rate forecast: project each calendar budget's spend to the end of its period from the
recent rate, and warn once per period when the projection crosses the limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from budgetd.engine import Engine
from budgetd.jobs.spend import entity_of
from budgetd.jobs.spend import since as spend_since
from budgetd.money import format_usd
from budgetd.periods import COUNTER_GRACE, window
from budgetd.policy.resolve import Subject
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
        for s in spends:
            entity = entity_of(s, rule.scope, org)
            if entity:
                recent[entity] = recent.get(entity, 0) + s.cost
        for entity, cost in recent.items():
            subject = Subject(
                org=org,
                user=entity if rule.scope == "user" else None,
                feature=entity if rule.scope == "feature" else None,
            )
            view = await engine.budgets(org, subject.user, subject.feature, None)
            scope = next((s for s in view.scopes if s.name == rule.name), None)
            if scope is None or scope.period_end is None:
                continue
            used = (scope.spent_micros or 0) + (scope.held_micros or 0)
            rate = cost / RATE_WINDOW.total_seconds()  # micros per second
            left = (scope.period_end - now).total_seconds()
            if used >= scope.limit or rate <= 0 or used + rate * left <= scope.limit:
                continue
            runs_out = now + timedelta(seconds=(scope.limit - used) / rate)
            local = runs_out.astimezone(policy.tz)
            win = window(rule.period, policy.tz, now)
            fields = {
                "type": "forecast",
                "budget": rule.name,
                "scope": rule.scope,
                "entity": entity,
                "period": win.charge_id,
                "used_micros": str(used),
                "limit_micros": str(scope.limit),
                "runs_out_at": runs_out.astimezone(UTC).isoformat(timespec="seconds"),
                "period_end_ms": str(int(scope.period_end.timestamp() * 1000)),
                "summary": (
                    f"{rule.scope} {entity}: at this rate budget '{rule.name}' "
                    f"({format_usd(used)} of {format_usd(scope.limit)}) runs out "
                    f"{local:%A %H:%M} {policy.timezone}"
                ),
                "at_ms": str(int(now.timestamp() * 1000)),
            }
            keep = (win.end - now) + COUNTER_GRACE
            event_id = f"forecast|{rule.name}|{entity}|{win.charge_id}"
            if await queue.emit(org, event_id, keep, fields):
                emitted += 1
    return emitted
