"""Benchmark: reserve→commit pairs through the engine (no HTTP) on one Redis and on a 3-primary
Redis Cluster, many orgs at once, driven from several processes so that one Python process is
not the limit. Prints pairs/s for each, the ratio, and Redis CPU per pair; then one hot org alone
on the cluster (all of its load lands on one shard).

    /work/venv/bin/python bench/scale_out.py [--procs N] [--concurrency 32] [--duration 5]

Starts its own redis-server processes on free loopback ports (removed on exit). Each worker
process builds its own Engine (policy from a temp dir: ``--orgs`` orgs, each with org-month,
feature-day and user-day budgets and a per-user request/token bucket, 200 users) over its own
store, and runs ``--concurrency`` loops of reserve then commit.

The figure that does not need idle cores (issue 13): **pairs per Redis-CPU-second**, pairs
divided by the CPU time (``used_cpu_user + used_cpu_sys``) of every Redis process over the
same window, with each shard's share, for 1 and 3 shards. On a machine where clients and
shards share two cores, pairs/s says how busy the machine was; this ratio says what one Redis
core carries. The machine's load (CPU steal, the load average) is printed with each row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.servers: the same server helpers as the test suite

import redis  # noqa: E402
from tests.servers import HOST, start_cluster, start_redis  # noqa: E402

from _machine import steal_ticks  # noqa: E402

try:
    import uvloop
except ImportError:  # the bench still runs, on the default loop
    uvloop = None  # type: ignore[assignment]

from budgetd.clock import SystemClock  # noqa: E402
from budgetd.contract import CommitRequest, Grant, ReserveRequest  # noqa: E402
from budgetd.engine import Engine  # noqa: E402
from budgetd.metrics import Metrics  # noqa: E402
from budgetd.policy.registry import PolicyRegistry  # noqa: E402
from budgetd.store.connect import redis_store  # noqa: E402
from budgetd.usage import Usage  # noqa: E402

PRICING = ROOT / "tests" / "data" / "pricing.yaml"
USERS = 200
POLICY = """
org: {org}
timezone: UTC
defaults:
  hold_ttl_s: 60
budgets:
  - {{name: org-month, scope: org, limit_usd: 1000000, period: month}}
  - {{name: feature-day, scope: feature, limit_usd: 1000000, period: day}}
  - {{name: user-day, scope: user, limit_usd: 1000000, period: day}}
rate_limits:
  - {{name: user-rate, scope: user, requests_per_minute: 10000000,
     input_tokens_per_minute: 1000000000, output_tokens_per_minute: 1000000000}}
"""
USAGE = CommitRequest(usage=Usage(input_tokens=900, output_tokens=300))


def write_policies(directory: Path, orgs: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for org in orgs:
        (directory / f"{org}.yaml").write_text(POLICY.format(org=org))


async def _drive(
    url: str, policy_dir: Path, orgs: list[str], proc: int, args: Any
) -> tuple[int, float]:
    registry = PolicyRegistry(policy_dir, PRICING)
    status = registry.reload()
    assert status.ok, status.errors
    store = redis_store(url, timeout_s=5.0, max_connections=args.concurrency)
    engine = Engine(registry, store, SystemClock(), Metrics())
    pairs = 0
    counting = False
    stop = False

    async def loop(slot: int) -> None:
        nonlocal pairs
        n = 0
        while not stop:
            org = orgs[(slot + n) % len(orgs)]
            rid = f"p{proc}s{slot}n{n}"
            request = ReserveRequest(
                org=org,
                model="claude-haiku-test",
                input_tokens=1000,
                max_tokens=1000,
                user=f"u{(slot * 7 + n) % USERS}",
                feature=f"f{n % 5}",
                reservation_id=rid,
            )
            n += 1
            answer = await engine.reserve(request)
            assert isinstance(answer, Grant) and not answer.degraded
            await engine.commit(org, rid, USAGE)
            if counting:
                pairs += 1

    tasks = [asyncio.create_task(loop(s)) for s in range(args.concurrency)]
    await asyncio.sleep(args.warmup)
    counting = True
    cpu0 = time.process_time()
    await asyncio.sleep(args.duration)
    counting = False
    cpu = time.process_time() - cpu0
    stop = True
    await asyncio.gather(*tasks)
    await store.close()
    return pairs, cpu


def _worker(url: str, policy_dir: str, orgs: list[str], proc: int, args: Any, out: Any) -> None:
    if uvloop is not None:
        uvloop.install()
    out.put(asyncio.run(_drive(url, Path(policy_dir), orgs, proc, args)))


def _redis_cpu(ports: list[int]) -> list[float]:
    """``used_cpu_user + used_cpu_sys`` of each Redis process, in seconds."""
    out = []
    for port in ports:
        with redis.Redis(host=HOST, port=port) as c:
            info = c.info("cpu")
            out.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return out


def run(url: str, ports: list[int], policy_dir: Path, orgs: list[str], args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(url, str(policy_dir), orgs, p, args, out))
        for p in range(args.procs)
    ]
    for p in procs:
        p.start()
    # Workers count only inside their measured window; Redis CPU is taken around it.
    time.sleep(args.warmup + 1.0)  # process start-up (imports) + warm-up
    cpu0, steal0, load0 = _redis_cpu(ports), steal_ticks(), os.getloadavg()[0]
    time.sleep(args.duration - 1.0)
    cpu1, steal1 = _redis_cpu(ports), steal_ticks()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    pairs = sum(n for n, _ in results)
    rate = pairs / args.duration
    shard_cpu = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    pairs_in_cpu_window = max(1.0, rate * (args.duration - 1.0))
    return {
        "pairs": pairs,
        "pairs_per_s": rate,
        "redis_cpu_us_per_pair": sum(shard_cpu) / pairs_in_cpu_window * 1e6,
        "pairs_per_redis_cpu_s": pairs_in_cpu_window / max(1e-9, sum(shard_cpu)),
        "shard_cpu_share": [round(c / max(1e-9, sum(shard_cpu)), 3) for c in shard_cpu],
        "redis_cpu_util": [round(c / (args.duration - 1.0), 3) for c in shard_cpu],
        "client_cpu_us_per_pair": sum(c for _, c in results) / max(1, pairs) * 1e6,
        "steal": (steal1[0] - steal0[0]) / max(1, steal1[1] - steal0[1]),
        "loadavg_1m": (load0, os.getloadavg()[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--concurrency", type=int, default=32, help="loops per process")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--orgs", type=int, default=48)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    print(f"{args.procs} processes × {args.concurrency} loops, {args.duration:.0f} s measured")
    orgs = [f"org{i}" for i in range(args.orgs)]
    with tempfile.TemporaryDirectory(prefix="budgetd-scale-") as tmp:
        root = Path(tmp)
        policy_dir = root / "policies"
        write_policies(policy_dir, orgs)
        single = start_redis(root / "single")
        try:
            one = run(single.url, [single.port], policy_dir, orgs, args)
        finally:
            single.stop()
        cluster = start_cluster(root / "cluster")
        try:
            many = run(cluster.url, cluster.ports, policy_dir, orgs, args)
            cluster.flush()
            hot = run(cluster.url, cluster.ports, policy_dir, orgs[:1], args)
        finally:
            cluster.stop()
    shards = 3
    rows = [
        (f"1 Redis, {args.orgs} orgs", one),
        (f"{shards}-primary cluster, {args.orgs} orgs", many),
        ("cluster, 1 org (1 shard)", hot),
    ]
    print(
        f"{'target':32} {'pairs/s':>9} {'pairs/Redis-CPU-s':>18} {'Redis CPU µs/pair':>18} "
        f"{'client CPU µs/pair':>19}  shards' CPU share; load"
    )
    for name, r in rows:
        print(
            f"{name:32} {r['pairs_per_s']:9,.0f} {r['pairs_per_redis_cpu_s']:18,.0f} "
            f"{r['redis_cpu_us_per_pair']:18,.0f} {r['client_cpu_us_per_pair']:19,.0f}  "
            f"{'/'.join(f'{x:.0%}' for x in r['shard_cpu_share'])}; steal {r['steal']:.1%}, "
            f"load {r['loadavg_1m'][0]:.1f} → {r['loadavg_1m'][1]:.1f}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({name: r for name, r in rows}, indent=2, default=list) + "\n"
        )
    print(
        f"ratio cluster / single: {many['pairs_per_s'] / one['pairs_per_s']:.2f} "
        f"(ideal {shards}.0 once the clients are not the limit)"
    )
    ceiling = 1e6 / max(1.0, hot["redis_cpu_us_per_pair"])
    print(f"one shard's ceiling (1 core / Redis CPU per pair): {ceiling:,.0f} pairs/s")


if __name__ == "__main__":
    main()
