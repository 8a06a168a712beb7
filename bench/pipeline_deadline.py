"""Micro-benchmark: the client CPU of bounding each pipelined script call by the store timeout.

    .venv/bin/python bench/pipeline_deadline.py [--calls 20000] [--concurrency 8] [--rounds 6]

It starts its own ``redis-server`` (loopback, free port, no persistence; removed on exit) and
drives ``store/pipeline.py``'s ``ScriptPipeline`` on uvloop with a one-line script
(``return ARGV[1]``), so the figures are the client's bookkeeping, not Redis's work:

  * ``per-call timeout``: each call inside ``asyncio.timeout(1.0)`` (what ``ScriptStore`` did
    before issue 13: a timer handle, a context manager and a cancellation scope per call);
  * ``pipeline deadline``: each call passes its deadline to the pipeline, whose one timer per
    connection fails the overdue calls (what it does now).

Both pass the pipeline a deadline, so the difference is the per-call timeout alone. The two
variants alternate, ``--rounds`` times each, in one process; each round reports this process's
CPU (user + sys) per call. The machine's load average and CPU steal during the run are printed
next to the figures (the machine may be shared).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from budgetd.store.pipeline import ScriptPipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import load_average, steal_ticks
from _servers import throwaway_redis

ECHO = "return ARGV[1]"
SHA = hashlib.sha1(ECHO.encode()).hexdigest()
TIMEOUT_S = 1.0


async def per_call_timeout(pipeline: ScriptPipeline, arg: str) -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(TIMEOUT_S):
        await pipeline.call(SHA, ECHO, [], [arg], deadline=loop.time() + TIMEOUT_S)


async def pipeline_deadline(pipeline: ScriptPipeline, arg: str) -> None:
    loop = asyncio.get_running_loop()
    await pipeline.call(SHA, ECHO, [], [arg], deadline=loop.time() + TIMEOUT_S)


VARIANTS: dict[str, Callable[[ScriptPipeline, str], Awaitable[None]]] = {
    "per-call timeout": per_call_timeout,
    "pipeline deadline": pipeline_deadline,
}


async def one_round(
    pipeline: ScriptPipeline,
    call: Callable[[ScriptPipeline, str], Awaitable[None]],
    calls: int,
    concurrency: int,
) -> float:
    """This process's CPU µs per call for ``calls`` calls at ``concurrency`` in flight."""
    counter = itertools.count()

    async def slot() -> None:
        while (i := next(counter)) < calls:
            await call(pipeline, str(i))

    started = time.process_time()
    await asyncio.gather(*(slot() for _ in range(concurrency)))
    return (time.process_time() - started) / calls * 1e6


async def run(port: int, calls: int, concurrency: int, rounds: int) -> dict[str, list[float]]:
    pipeline = ScriptPipeline("127.0.0.1", port)
    try:
        await one_round(pipeline, pipeline_deadline, 2000, concurrency)  # warm-up
        figures: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(rounds):
            for name, call in VARIANTS.items():
                figures[name].append(await one_round(pipeline, call, calls, concurrency))
        return figures
    finally:
        await pipeline.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    redis_server = shutil.which("redis-server") or shutil.which("valkey-server")
    if redis_server is None:
        raise SystemExit("redis-server is not installed")
    with tempfile.TemporaryDirectory() as tmp, throwaway_redis(redis_server, tmp) as port:
        print(f"load average {load_average()} at start; {os.cpu_count()} CPUs", flush=True)
        steal0, total0 = steal_ticks()
        figures = uvloop.run(run(port, args.calls, args.concurrency, args.rounds))
        steal1, total1 = steal_ticks()
    print(
        f"{args.calls} calls x {args.rounds} rounds per variant, {args.concurrency} in flight "
        f"(client CPU µs per call: median [min–max])"
    )
    for name, values in figures.items():
        print(
            f"  {name:18} {statistics.median(values):6.2f}  [{min(values):.2f}–{max(values):.2f}]"
        )
    saved = statistics.median(figures["per-call timeout"]) - statistics.median(
        figures["pipeline deadline"]
    )
    print(f"  saved per call     {saved:6.2f}")
    steal_pct = 100 * (steal1 - steal0) / max(1, total1 - total0)
    print(f"load average {load_average()} at end; CPU steal during the run {steal_pct:.1f} %")


if __name__ == "__main__":
    main()
