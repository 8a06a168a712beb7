"""Benchmark: how long one step of the reports follower stops everything else, in the service's
event loop and in Redis, by the number of ledger entries a step reads and applies.

    .venv/bin/python bench/follower_stalls.py [--entries 15000] [--users 100] [--rounds 2]

The follower (``reports/follower.py``, the scheduler's ``reports`` job, every 5 s on one
replica) reads an org's new ledger entries, folds them (Python, in the replica's event loop)
and applies the sums in one Lua script (which no other command of that Redis interleaves
with). At 3,000 commits/s a pass has ~15,000 entries. Two ways of stepping, alternately,
``--rounds`` times each: **before** (2,000 entries read, folded and applied at a time, as the
follower did) and **after** (the follower's defaults: ``SLICE`` entries read and folded between
two turns of the loop, an apply once a step's sums fill ``ROWS`` rows or ``BATCH`` entries),
each on a fresh ``redis-server`` (loopback, no persistence; removed on exit) seeded with
``--entries`` commit entries of the last 5 s (``bench/reports.py``'s shapes: ``--users``
users, 20 features, 4 models), it runs one pass on uvloop and reports:

  * **loop stall**: the longest the event loop went without running a 0.5 ms ticker task,
    minus the ticker's own period: what a reserve or commit arriving then would wait;
  * **Redis stall**: the longest single command of the pass (``SLOWLOG``, every command
    logged): what every client of that Redis, every org, would wait;
  * the pass's wall time, the follower's process CPU and Redis CPU per entry.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import redis
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.servers
from tests.servers import start_redis

from _machine import load_average
from _stalls import measure
from budgetd.reports import follower
from budgetd.store.connect import redis_store
from reports import ORG, seed

STEPS = {
    "before": {"batch": 2000, "rows": 10**9, "slice_": 2000},
    "after": {"batch": follower.BATCH, "rows": follower.ROWS, "slice_": follower.SLICE},
}


async def one_pass(url: str, sync: redis.Redis, steps: dict[str, int]) -> dict[str, Any]:
    store = redis_store(url, timeout_s=30.0)
    s = await measure(sync, lambda: follower.follow(store, ORG, ZoneInfo("UTC"), **steps))
    await store.close()
    applied = s.result
    scripts = [us for name, us in s.commands if name == "EVALSHA"]
    return {
        "applied": applied,
        "loop_ms": s.loop_ms,
        "redis_ms": max(scripts, default=0) / 1e3,
        "applies": len(scripts),
        "wall_s": s.wall_s,
        "proc_us": s.cpu_s / applied * 1e6,
        "redis_us": s.redis_cpu_s / applied * 1e6,
        "steal": s.steal,
        "load": s.load,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=15_000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"{args.entries:,} entries of the last 5 s, {args.users} users; load {load_average()}")
    print("step    loop stall  Redis stall  applies  pass    follower CPU  Redis CPU (per entry)")
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(Path(tmp))
        try:
            url = server.url
            sync = redis.Redis.from_url(url)
            for name in ["before", "after"] * args.rounds:
                sync.flushall()
                seed(sync, args.entries, args.users, span_ms=5_000)
                r = await one_pass(url, sync, STEPS[name])
                assert r["applied"] == args.entries, r
                print(
                    f"{name:<6}  {r['loop_ms']:7.1f} ms  {r['redis_ms']:8.1f} ms  "
                    f"{r['applies']:>6}  {r['wall_s']:5.2f} s  {r['proc_us']:8.1f} µs  "
                    f"{r['redis_us']:7.1f} µs   "
                    f"steal {r['steal']:.1%}, load {r['load']}"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    uvloop.run(main())
