"""How long a piece of background work stops everything else: the event loop it runs in, and
the Redis it talks to. Shared by ``follower_stalls.py`` and ``job_stalls.py``.

  * **loop stall**: the longest the event loop went without running a 0.5 ms ticker task,
    minus the ticker's own period: what a reserve or commit arriving then would wait;
  * **Redis stall**: the longest single command of the work (``SLOWLOG`` with every command
    logged): what every client of that Redis, every org, would wait;
  * wall time, and the machine's load average and steal over the work (the VM is shared).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from _machine import load_average, steal_ticks

TICK_S = 0.0005


@dataclass
class Stall:
    result: Any
    loop_ms: float
    redis_ms: float
    """The longest command; 0 when none ran."""
    redis_command: str
    wall_s: float
    cpu_s: float
    """This process's CPU over the work."""
    redis_cpu_s: float
    commands: list[tuple[str, float]] = field(default_factory=list)
    """Every command of the work: (name, µs)."""
    steal: float = 0.0
    load: str = ""


def redis_cpu_s(client: redis.Redis) -> float:
    info: Any = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _name(command: bytes | str) -> str:
    text = command.decode(errors="replace") if isinstance(command, bytes) else command
    return text.split(" ", 1)[0].upper()


async def measure(
    sync: redis.Redis, work: Callable[[], Awaitable[Any]], slower_than_us: int = 0
) -> Stall:
    """Run ``work`` in this loop beside a ticker task, with every Redis command logged."""
    sync.config_set("slowlog-log-slower-than", slower_than_us)
    sync.config_set("slowlog-max-len", 1_000_000)
    sync.slowlog_reset()
    stop = asyncio.Event()
    worst = 0.0

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(TICK_S)
            now = time.perf_counter()
            worst = max(worst, now - last - TICK_S)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    steal0, total0 = steal_ticks()
    cpu0, wall0, proc0 = redis_cpu_s(sync), time.perf_counter(), time.process_time()
    result = await work()
    wall, proc, rcpu = (
        time.perf_counter() - wall0,
        time.process_time() - proc0,
        redis_cpu_s(sync) - cpu0,
    )
    steal1, total1 = steal_ticks()
    stop.set()
    await ticking
    log: Any = sync.slowlog_get(1_000_000)
    commands = [
        (name, e["duration"])
        for e in log
        if (name := _name(e["command"])) not in ("INFO", "SLOWLOG", "CONFIG")
    ]
    name, longest = max(commands, key=lambda c: c[1], default=("", 0))
    return Stall(
        result=result,
        loop_ms=worst * 1e3,
        redis_ms=longest / 1e3,
        redis_command=name,
        wall_s=wall,
        cpu_s=proc,
        redis_cpu_s=rcpu,
        commands=commands,
        steal=(steal1 - steal0) / max(1, total1 - total0),
        load=load_average().split()[0],
    )
