"""Keep the period clock in step with Redis TIME (period ids come from Python; leases and
buckets use TIME inside the scripts, so both must agree on what time it is)."""

from __future__ import annotations

import time

from budgetd.clock import SystemClock
from budgetd.engine import Engine


async def sync_clock(engine: Engine, clock: SystemClock) -> None:
    sent = time.time()
    server = await engine.store.server_time()
    clock.sync(server, sent, time.time())
