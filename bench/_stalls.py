"""How long a piece of background work stops everything else: the event loop it runs in, and
the Redis it talks to. Shared by ``follower_stalls.py`` and ``job_stalls.py``.

  * **loop stall**: the longest the event loop went without running a 0.5 ms ticker task,
    minus the ticker's own period: what a reserve or commit arriving then would wait;
  * **Redis stall**: the longest single command of the work (``SLOWLOG`` with every command
    logged): what every client of that Redis, every org, would wait;
  * the longest garbage collection meanwhile (a loop stall of its own kind);
  * wall time, and the machine's load average and steal over the work (the VM is shared).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from _machine import load_average, steal_ticks

TICK_S = 0.0005
OVER_S = 0.005
"""Stalls longer than this are counted (one long stop tells apart from many)."""


@dataclass
class Stall:
    result: Any
    loop_ms: float
    stalls_over_5ms: int
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
    gc_ms: float = 0.0
    """The longest garbage collection during the work (a stop of the loop like any other)."""
    gc_generation: int = -1


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
    over = 0

    async def ticker() -> None:
        nonlocal worst, over
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(TICK_S)
            now = time.perf_counter()
            worst = max(worst, now - last - TICK_S)
            over += now - last - TICK_S > OVER_S
            last = now

    collections: list[tuple[float, int]] = []
    started = 0.0

    def timed_gc(phase: str, info: dict[str, Any]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            collections.append((time.perf_counter() - started, info["generation"]))

    # The synchronous reads of Redis (INFO) block the loop: made before the ticker starts and
    # after it stops, so they are not counted as the work's stalls.
    cpu0 = redis_cpu_s(sync)
    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    gc.callbacks.append(timed_gc)
    steal0, total0 = steal_ticks()
    wall0, proc0 = time.perf_counter(), time.process_time()
    result = await work()
    wall, proc = time.perf_counter() - wall0, time.process_time() - proc0
    steal1, total1 = steal_ticks()
    gc.callbacks.remove(timed_gc)
    gc_s, generation = max(collections, default=(0.0, -1))
    stop.set()
    await ticking
    rcpu = redis_cpu_s(sync) - cpu0
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
        stalls_over_5ms=over,
        redis_ms=longest / 1e3,
        redis_command=name,
        wall_s=wall,
        cpu_s=proc,
        redis_cpu_s=rcpu,
        commands=commands,
        steal=(steal1 - steal0) / max(1, total1 - total0),
        load=load_average().split()[0],
        gc_ms=gc_s * 1e3,
        gc_generation=generation,
    )
