"""Reclaim holds whose lease ran out, for every org the policy knows."""

from __future__ import annotations

from budgetd.engine import Engine


async def sweep_expired(engine: Engine) -> int:
    total = 0
    orgs = list(engine.registry.current.orgs) if engine.registry.loaded else []
    for org in orgs:
        while True:
            reclaimed, remaining = await engine.expire(org)
            total += reclaimed
            if remaining == 0 or reclaimed == 0:
                break
    if total:
        engine.metrics.expired_holds.inc(total)
    return total
