"""Benchmark: reports from aggregates, and what keeping the aggregates costs the hot path.

    .venv/bin/python bench/reports.py [--entries 1000000] [--users 100000] [--hot-s 20]

Starts its own redis-server (no persistence) in a temp dir and stops it on exit.

1. **Reports**: seeds one org's ledger with ``--entries`` commit entries shaped exactly as
   commit.lua writes them (reservation JSON with user, feature and a session; model; usage
   JSON with every token kind), ``--users`` users, 20 features, 4 models, spread over the last
   30 days; the follower folds them (entries/s, Redis CPU); then each report is timed (median
   and worst of 20 runs, wall clock, this process to a loopback Redis).
2. **Hot-path cost**: the engine's reserve→commit pairs (8 in flight) on a fresh org for
   ``--hot-s`` seconds without the follower (Redis CPU per pair from INFO CPU); then the
   follower alone folds exactly those entries (Redis CPU, and this process's CPU); then the
   same load again with the follower running every second in the same event loop, as the
   service's scheduler runs it (pairs/s with and without).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
import redis  # noqa: E402
from tests.servers import start_redis  # noqa: E402

from budgetd.clock import SystemClock  # noqa: E402
from budgetd.contract import CommitRequest, Grant, ReserveRequest  # noqa: E402
from budgetd.engine import Engine  # noqa: E402
from budgetd.metrics import Metrics  # noqa: E402
from budgetd.policy.registry import PolicyRegistry  # noqa: E402
from budgetd.reports import follower, query  # noqa: E402
from budgetd.reports.budgets import budgets  # noqa: E402
from budgetd.store import keys  # noqa: E402
from budgetd.store.connect import redis_store  # noqa: E402
from budgetd.store.scripted import ScriptStore  # noqa: E402
from budgetd.usage import Usage  # noqa: E402

ORG, HOT_ORG = "big", "hot"
MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-5", "claude-opus-4-1")
POLICY = """\
org: {org}
timezone: UTC
budgets:
  - {{name: org-month, scope: org, limit_usd: 100000000, period: month}}
  - {{name: feature-day, scope: feature, limit_usd: 10000000, period: day}}
  - {{name: user-day, scope: user, limit_usd: 1000000, period: day}}
"""


def cpu_s(client: redis.Redis) -> float:
    info: Any = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def seed(
    client: redis.Redis,
    entries: int,
    users: int,
    span_ms: int = 30 * 86_400_000,
    end_ms: int | None = None,
) -> None:
    """``entries`` commit entries of ``users`` users, spread over the ``span_ms`` before
    ``end_ms`` (now when None; the ledger must have no later entry)."""
    rng = random.Random(11)
    now_ms = int(time.time() * 1000) if end_ms is None else end_ms
    start_ms = now_ms - span_ms
    step = (now_ms - start_ms) // entries
    stream = keys.ledger(ORG)
    pipe = client.pipeline(transaction=False)
    for i in range(entries):
        user = (
            f"user-{int(rng.paretovariate(1.2) * 7) % users:06d}"
            if i % 2
            else f"user-{rng.randrange(users):06d}"
        )
        feature = f"feature-{rng.randrange(20):02d}"
        usage = {
            "input_tokens": rng.randrange(50, 4000),
            "output_tokens": rng.randrange(10, 1500),
            "cache_creation_input_tokens": 1000 if i % 7 == 0 else 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 600}
            if i % 7 == 0
            else None,
            "cache_read_input_tokens": rng.randrange(0, 20000) if i % 3 else 0,
        }
        reservation = {
            "org": ORG,
            "user": user,
            "feature": feature,
            "model": MODELS[i % 4],
            "input_tokens": 4000,
            "max_tokens": 2000,
            "metadata": {"session_id": f"s-{i // 25:07d}"},
        }
        pipe.xadd(
            stream,
            {
                "kind": "commit",
                "reservation_id": f"r{i:08d}",
                "cost_micros": rng.randrange(100, 90_000),
                "charged": f"bd:{{o:{ORG}}}:b:org-month:{ORG}:2026-11",
                "held_micros": 100_000,
                "overrun": 0,
                "late": 0,
                "at_ms": start_ms + i * step,
                "reservation": msgspec.json.encode(reservation).decode(),
                "model": MODELS[i % 4],
                "pricing_version": "2026-11-01",
                "usage": msgspec.json.encode(usage).decode(),
                "lines_picos": "{}",
            },
            id=f"{start_ms + i * step}-{i}",  # (several entries a ms when the span is short)
        )
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


async def timed(run: Callable[[], Awaitable[Any]], n: int = 20) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await run()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples), max(samples)


async def reports_phase(
    store: ScriptStore, engine: Engine, sync: redis.Redis, args: argparse.Namespace
) -> None:
    t0 = time.perf_counter()
    seed(sync, args.entries, args.users)
    print(
        f"seeded {args.entries:,} ledger entries in {time.perf_counter() - t0:.0f} s; "
        f"redis used_memory {sync.info('memory')['used_memory_human']}"
    )
    cpu0, t0, p0 = cpu_s(sync), time.perf_counter(), time.process_time()
    applied = await follower.follow(store, ORG, engine.policy(ORG).tz)
    wall, rcpu, pcpu = time.perf_counter() - t0, cpu_s(sync) - cpu0, time.process_time() - p0
    print(
        f"follower folded {applied:,} entries in {wall:.1f} s ({applied / wall:,.0f}/s); "
        f"redis CPU {rcpu:.1f} s ({rcpu / applied * 1e6:.1f} µs/entry), "
        f"follower process CPU {pcpu:.1f} s ({pcpu / applied * 1e6:.1f} µs/entry); "
        f"redis used_memory {sync.info('memory')['used_memory_human']}"
    )
    users = await query.usage(store, ORG, "user", *month_range(), top=1, tomorrow=month_range()[1])
    print(f"distinct users this month: {users.entities:,}")
    today = datetime.now(UTC).date()
    month = today.replace(day=1), today + timedelta(days=1)
    week = today - timedelta(days=6), today + timedelta(days=1)
    thirty = today - timedelta(days=29), today + timedelta(days=1)
    cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        (
            "usage by model, this month",
            lambda: query.usage(store, ORG, "model", *month, tomorrow=month[1]),
        ),
        (
            "usage by user, top 20, this month",
            lambda: query.usage(store, ORG, "user", *month, top=20, tomorrow=month[1]),
        ),
        (
            "usage by feature, this month",
            lambda: query.usage(store, ORG, "feature", *month, tomorrow=month[1]),
        ),
        (
            "usage by session, top 20, this month",
            lambda: query.usage(store, ORG, "session", *month, top=20, tomorrow=month[1]),
        ),
        (
            "usage by user, top 20, last 7 days",
            lambda: query.usage(store, ORG, "user", *week, top=20, tomorrow=week[1]),
        ),
        (
            "usage by user, top 20, last 30 days",
            lambda: query.usage(store, ORG, "user", *thirty, top=20, tomorrow=thirty[1]),
        ),
        ("daily by model, last 30 days", lambda: query.daily(store, ORG, *thirty)),
        ("budgets (org + top 20 features + top 20 users)", lambda: budgets(engine, store, ORG, 20)),
        (
            "usage by user, every row, this month",
            lambda: query.usage(store, ORG, "user", *month, tomorrow=month[1]),
        ),
    ]
    print("| report | median ms | worst ms |")
    print("|---|---:|---:|")
    for name, run in cases:
        med, worst = await timed(run, 5 if "every row" in name else 20)
        print(f"| {name} | {med:.1f} | {worst:.1f} |")


def month_range() -> tuple[date, date]:
    today = datetime.now(UTC).date()
    return today.replace(day=1), today + timedelta(days=1)


async def load(engine: Engine, seconds: float, prefix: str, concurrency: int = 8) -> int:
    done = 0
    stop = time.perf_counter() + seconds
    usage = Usage(input_tokens=900, output_tokens=300, cache_read_input_tokens=2000)

    async def slot(n: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < stop:
            rid = f"{prefix}-{n}-{i}"
            i += 1
            grant = await engine.reserve(
                ReserveRequest(
                    org=HOT_ORG,
                    model=MODELS[i % 2],
                    input_tokens=1000,
                    max_tokens=400,
                    user=f"u{(n * 7919 + i) % 1000}",
                    feature=f"f{i % 10}",
                    reservation_id=rid,
                )
            )
            assert isinstance(grant, Grant), grant
            await engine.commit(HOT_ORG, rid, CommitRequest(usage=usage))
            done += 1

    await asyncio.gather(*(slot(n) for n in range(concurrency)))
    return done


async def hot_phase(store: ScriptStore, engine: Engine, sync: redis.Redis, seconds: float) -> None:
    tz = engine.policy(HOT_ORG).tz
    await load(engine, 2, "warm")
    await follower.follow(store, HOT_ORG, tz)
    cpu0 = cpu_s(sync)
    pairs = await load(engine, seconds, "a")
    hot_cpu = cpu_s(sync) - cpu0
    print(
        f"hot path alone: {pairs / seconds:,.0f} pairs/s; redis CPU {hot_cpu:.2f} s "
        f"({hot_cpu / pairs * 1e6:.0f} µs/pair)"
    )
    cpu0, p0 = cpu_s(sync), time.process_time()
    folded = await follower.follow(store, HOT_ORG, tz)
    f_cpu, f_pcpu = cpu_s(sync) - cpu0, time.process_time() - p0
    print(
        f"follower over those {folded:,} entries: redis CPU {f_cpu:.2f} s "
        f"({f_cpu / folded * 1e6:.0f} µs/entry, {100 * f_cpu / hot_cpu:.1f} % of the hot "
        f"path's redis CPU); follower's own CPU {f_pcpu:.2f} s "
        f"({f_pcpu / folded * 1e6:.0f} µs/entry)"
    )

    async def every_second() -> None:
        while True:
            await asyncio.sleep(1)
            await follower.follow(store, HOT_ORG, tz)

    task = asyncio.create_task(every_second())
    cpu0 = cpu_s(sync)
    with_f = await load(engine, seconds, "b")
    both_cpu = cpu_s(sync) - cpu0
    task.cancel()
    print(
        f"hot path with the follower every 1 s in the same process: {with_f / seconds:,.0f} "
        f"pairs/s ({100 * (with_f - pairs) / pairs:+.1f} %); redis CPU {both_cpu:.2f} s"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--hot-s", type=float, default=20)
    parser.add_argument("--skip-reports", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(Path(tmp) / "redis")
        try:
            policies = Path(tmp) / "policies"
            policies.mkdir()
            for org in (ORG, HOT_ORG):
                (policies / f"{org}.yaml").write_text(POLICY.format(org=org))
            registry = PolicyRegistry(policies, ROOT / "policies" / "pricing.yaml")
            status = registry.reload()
            assert status.ok, status.errors
            store = redis_store(server.url, timeout_s=30)
            engine = Engine(registry, store, SystemClock(), Metrics())
            sync = redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)
            if not args.skip_reports:
                await reports_phase(store, engine, sync, args)
            await hot_phase(store, engine, sync, args.hot_s)
            await store.close()
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
