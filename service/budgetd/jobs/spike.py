"""Spike detection: the last hour's spend of a budget's scope above k× its trailing hourly
average raises one alert per (budget, entity, hour)."""

from __future__ import annotations

from datetime import datetime, timedelta

from budgetd.engine import Engine
from budgetd.jobs.spend import hourly, since
from budgetd.money import format_usd
from budgetd.pacing import paced
from budgetd.store.events import EventQueue

TRAILING_HOURS = 24


async def detect_spikes(engine: Engine, queue: EventQueue, org: str, now: datetime) -> int:
    policy = engine.policy(org)
    now_ms = int(now.timestamp() * 1000)
    hours = TRAILING_HOURS + 1
    since_ms = now_ms - hours * 3_600_000
    spends = await since(queue.store, org, since_ms)
    hour_id = now.strftime("%Y-%m-%dT%H")
    emitted = 0
    for rule in policy.budgets:
        if rule.spike_factor is None or rule.period.session:
            continue  # a session (a run) has too few hours for a baseline
        series_of = await hourly(spends, rule, policy, now_ms, hours)
        async for entity, series in paced(series_of.items()):  # every spender of a day
            current, trailing = series[-1], series[:-1]
            if not any(trailing):
                continue  # no history to compare with: a first burst is not a spike
            average = sum(trailing) / len(trailing)
            # Exact comparison: current > factor × average, without floats.
            factor = rule.spike_factor
            if current < rule.spike_min or current * factor.denominator * len(trailing) <= (
                factor.numerator * sum(trailing)
            ):
                continue
            fields = {
                "type": "spike",
                "budget": rule.name,
                "scope": rule.scope,
                "entity": entity,
                "period": hour_id,
                "used_micros": str(current),
                "limit_micros": "0",
                "summary": (
                    f"{rule.scope} {entity} spent {format_usd(current)} in the last "
                    f"hour, {current / average:.1f}"
                    f"× its {TRAILING_HOURS}-hour average ({format_usd(int(average))})"
                ),
                "at_ms": str(now_ms),
            }
            if await queue.emit(
                org, f"spike|{rule.name}|{entity}|{hour_id}", timedelta(days=2), fields
            ):
                emitted += 1
    return emitted
