"""Benchmark: Redis memory per active scope-period counter and per open reservation, measured
with ``MEMORY USAGE`` over ``--users`` users of one org, and the TTL of every counter.

    /work/venv/bin/python bench/memory.py [--users 100000] [--sample 3000]

Starts its own redis-server on a free loopback port and stops it at exit. The policy: org
``mem`` with a per-user daily budget and a per-user hourly budget (the hourly one shows how long
old periods stay). Each user gets one reserve, then one commit.

The Lua scripts are driven directly, pipelined, with exactly the KEYS and ARGV the store sends:
the engine builds one reserve (and one commit) for user ``u000000``, the call is captured at the
store seam instead of being sent, and the user and reservation ids are substituted for each
user. (Through the engine one call at a time, 100,000 users take minutes on this machine; the
bytes in Redis are the same.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.servers: the same server helpers as the test suite

import redis  # noqa: E402
from tests.servers import HOST, start_redis  # noqa: E402

from budgetd.clock import SystemClock  # noqa: E402
from budgetd.contract import CommitRequest, ReserveRequest  # noqa: E402
from budgetd.engine import Engine  # noqa: E402
from budgetd.metrics import Metrics  # noqa: E402
from budgetd.periods import COUNTER_GRACE  # noqa: E402
from budgetd.policy.registry import PolicyRegistry  # noqa: E402
from budgetd.store import keys  # noqa: E402
from budgetd.store.connect import redis_store  # noqa: E402
from budgetd.store.scripts import source  # noqa: E402
from budgetd.usage import Usage  # noqa: E402

PRICING = ROOT / "tests" / "data" / "pricing.yaml"
ORG = "mem"
POLICY = f"""
org: {ORG}
timezone: UTC
defaults:
  hold_ttl_s: 3600
budgets:
  - {{name: user-day, scope: user, limit_usd: 100, period: day}}
  - {{name: user-hour, scope: user, limit_usd: 100, period: hour}}
"""
TEMPLATE_USER, TEMPLATE_RID = "u000000", "r000000"
BATCH = 2000


class Captured(Exception):
    def __init__(self, keys_: Sequence[str], args: Sequence[str | int]) -> None:
        super().__init__("captured")
        self.keys, self.argv = list(keys_), list(args)


async def capture(policy_dir: Path, url: str) -> tuple[Captured, Captured]:
    """One reserve and one commit for the template user, as the store would send them."""
    registry = PolicyRegistry(policy_dir, PRICING)
    assert registry.reload().ok
    store = redis_store(url)
    engine = Engine(registry, store, SystemClock(), Metrics())

    async def grab(name: str, keys_: Sequence[str], args: Sequence[str | int]) -> Any:
        raise Captured(keys_, args)

    store.run_script = grab  # type: ignore[method-assign]
    request = ReserveRequest(
        org=ORG,
        model="claude-haiku-test",
        input_tokens=1000,
        max_tokens=1000,
        user=TEMPLATE_USER,
        reservation_id=TEMPLATE_RID,
    )
    try:
        await engine.reserve(request)
        raise AssertionError("reserve was not captured")
    except Captured as got:
        reserve = got
    body = CommitRequest(
        usage=Usage(input_tokens=900, output_tokens=300), model="claude-haiku-test"
    )
    try:
        await engine.commit(ORG, TEMPLATE_RID, body)
        raise AssertionError("commit was not captured")
    except Captured as got:
        commit = got
    await store.close()
    return reserve, commit


def _subst(values: Sequence[Any], i: int) -> list[Any]:
    user, rid = f"u{i:06d}", f"r{i:06d}"
    return [
        v.replace(TEMPLATE_USER, user).replace(TEMPLATE_RID, rid) if isinstance(v, str) else v
        for v in values
    ]


def run_all(client: redis.Redis, name: str, call: Captured, users: int, expect: str) -> float:
    sha = client.script_load(source(name))
    started = time.monotonic()
    for lo in range(0, users, BATCH):
        pipe = client.pipeline(transaction=False)
        for i in range(lo, min(users, lo + BATCH)):
            k = _subst(call.keys, i)
            pipe.evalsha(sha, len(k), *k, *_subst(call.argv, i))
        for reply in pipe.execute():
            assert reply[0] == expect, reply
    return time.monotonic() - started


def usage(client: redis.Redis, names: list[str]) -> float:
    pipe = client.pipeline(transaction=False)
    for n in names:
        pipe.memory_usage(n, samples=0)
    sizes = [int(s) for s in pipe.execute()]
    return sum(sizes) / len(sizes)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=3000)
    args = parser.parse_args()
    n = args.users
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; {n:,} users of one org"
    )
    with tempfile.TemporaryDirectory(prefix="budgetd-mem-") as tmp:
        root = Path(tmp)
        (root / "policies").mkdir()
        (root / "policies" / "mem.yaml").write_text(POLICY)
        server = start_redis(root / "redis")
        try:
            reserve, commit = asyncio.run(capture(root / "policies", server.url))
            client = redis.Redis(host=HOST, port=server.port, decode_responses=True)
            # The layout of issue 13: a user's counters are fields of the org's period hashes
            # (one per day, one per hour), named in the reserve's plan, not in its keys.
            prefix = keys.counters(ORG, "")
            counters = list(dict.fromkeys(a for a in reserve.argv if str(a).startswith(prefix)))
            assert len(counters) == 2, counters  # the day's and the hour's counter hash
            print("one reserve touches:", ", ".join([*dict.fromkeys(reserve.keys), *counters]))
            base = used_memory(client)
            took = run_all(client, "reserve", reserve, n, "granted")
            after_reserve = used_memory(client)
            sample = random.Random(1).sample(range(n), min(n, args.sample))
            rkeys = [keys.reservation(ORG, f"r{i:06d}") for i in sample]
            open_counter = usage(client, counters) * len(counters) / n
            open_res = usage(client, rkeys)
            holds = int(client.memory_usage(keys.holds(ORG), samples=0) or 0)
            print(f"\nafter {n:,} reserves ({n / took:,.0f} reserves/s pipelined):")
            print(
                f"  a user's counters (2 fields `|h` in 2 period hashes), MEMORY USAGE of the "
                f"hashes / users: {open_counter:6.0f} B"
            )
            print(f"  open reservation hash, mean of {len(rkeys):,}:          {open_res:6.0f} B")
            print(f"  hold index (one zset per org): {holds:,} B = {holds / n:.0f} B per hold")
            print(
                f"  INFO used_memory delta / users: {(after_reserve - base) / n:6.0f} B "
                f"(2 held fields + 1 reservation + 1 hold entry per user)"
            )

            took = run_all(client, "commit", commit, n, "committed")
            after_commit = used_memory(client)
            settled_counter = usage(client, counters) * len(counters) / n
            resolved = usage(client, rkeys)
            ledger = int(client.memory_usage(keys.ledger(ORG), samples=0) or 0)
            print(f"\nafter {n:,} commits ({n / took:,.0f} commits/s pipelined):")
            print(
                f"  a user's counters (held, spent in 2 hashes) / users: {settled_counter:6.0f} B "
                f"(target ≤ 200)"
            )
            print(f"  resolved reservation (kept for replays), mean: {resolved:6.0f} B")
            print(f"  ledger stream: {ledger / n:.0f} B per entry")
            print(
                f"  INFO used_memory delta / users since start: {(after_commit - base) / n:6.0f} B"
            )

            # Old periods go by themselves: every counter expires at its period's end + grace.
            now_ms = int(time.time() * 1000)
            now = datetime.now(UTC)
            hour_end = now.replace(minute=0, second=0, microsecond=0).timestamp() + 3600
            day_end = now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() + 86400
            grace_ms = int(COUNTER_GRACE.total_seconds() * 1000)
            day_ttl, hour_ttl = (int(client.pttl(name)) for name in counters)
            bound = {
                "day": int(day_end * 1000) - now_ms + grace_ms,
                "hour": int(hour_end * 1000) - now_ms + grace_ms,
            }
            assert 0 < day_ttl <= bound["day"], "the day's hash outlives its bound"
            assert 0 < hour_ttl <= bound["hour"], "the hour's hash outlives its bound"
            print(
                f"\nTTL: both period hashes have one (no PTTL -1); the hour's expires in "
                f"{hour_ttl / 3.6e6:.2f} h (≤ period end + grace {COUNTER_GRACE}), the day's in "
                f"{day_ttl / 3.6e6:.2f} h"
            )
            live_hours = (3600_000 + grace_ms) / 3600_000
            print(
                f"  so one user with an hourly budget keeps up to {live_hours:.0f} hourly "
                f"counters alive (≈ {live_hours * settled_counter / 2 / 1024:.1f} KiB)"
            )
            client.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
