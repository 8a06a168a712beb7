"""Reclaim holds whose lease ran out, for every org the policy knows."""

from __future__ import annotations

from budgetd.engine import Engine

SWEEP_BATCH = 100
"""Holds one expire script frees: ~3-4 ms of Redis at a large org's holds (1,000 held it for
~35 ms, in which no reserve or commit of any org ran: docs/performance.md, "Job stalls"). A
replica that dies with thousands of holds open leaves them all due at once."""


async def sweep_expired(engine: Engine) -> int:
    total = 0
    orgs = list(engine.registry.current.orgs) if engine.registry.loaded else []
    for org in orgs:
        while True:
            reclaimed, remaining = await engine.expire(org, SWEEP_BATCH)
            total += reclaimed
            if remaining == 0 or reclaimed == 0:
                break
    if total:
        engine.metrics.expired_holds.inc(total)
    return total
