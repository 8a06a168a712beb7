"""Benchmark: how long each scheduler job stops everything else at a large org, in the
service's event loop and in Redis.

    flock /work/bench.lock chrt -r 10 .venv/bin/python bench/job_stalls.py \\
        [--entries 200000] [--hour 20000] [--users 100000] [--holds 5000] [--archive 300000]

The scheduler's jobs run in the event loop that serves reserves and commits, and Redis runs
one command at a time. On a fresh ``redis-server`` (loopback, no persistence; removed on exit)
it seeds one org as a large one looks late in a month: ``--entries`` commit entries over the
60 days before the last hour (half of them this month; retention keeps 32 days) and
``--hour`` in the last hour (``bench/reports.py``'s shapes:
``--users`` users, 20 features, 4 models), the reports' aggregates of all of them, ``--holds``
open holds whose lease ran out, and ``--archive`` sums in the ledger archive of counters past
their expiry (what months of retention leave: a day's counters per active user). Its policy:
an org month, a feature day and a user day budget (forecasts and spike alerts on, their
defaults), a log channel that also takes the digest. Then it runs each job once, on uvloop,
as the scheduler calls it (``jobs/scheduler.py``'s ``Jobs``), and reports per job the **loop
stall** and **Redis stall** (``bench/_stalls.py``), the wall time, the Redis commands it sent,
the load average and steal. Run it against other code with ``PYTHONPATH=<tree>/service``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from tests.servers import start_redis  # noqa: E402

from _machine import load_average  # noqa: E402
from _stalls import measure  # noqa: E402
from budgetd.clock import SystemClock  # noqa: E402
from budgetd.collector import freeze_built_app  # noqa: E402
from budgetd.contract import Grant, ReserveRequest  # noqa: E402
from budgetd.engine import Engine  # noqa: E402
from budgetd.jobs.period_close import close_periods  # noqa: E402
from budgetd.jobs.scheduler import Jobs  # noqa: E402
from budgetd.metrics import Metrics  # noqa: E402
from budgetd.policy.registry import PolicyRegistry  # noqa: E402
from budgetd.reports import follower  # noqa: E402
from budgetd.settings import Settings  # noqa: E402
from budgetd.store import keys  # noqa: E402
from budgetd.store.connect import redis_store  # noqa: E402
from budgetd.store.events import EventQueue  # noqa: E402
from reports import ORG, seed  # noqa: E402

POLICY = f"""\
org: {ORG}
timezone: UTC
channels:
  log: {{log: debug, digest: true}}
defaults:
  notify: [log]
budgets:
  - {{name: org-month, scope: org, limit_usd: 100000000, period: month}}
  - {{name: feature-day, scope: feature, limit_usd: 10000000, period: day}}
  - {{name: user-day, scope: user, limit_usd: 1, period: day}}
"""
HOUR_MS = 3_600_000


async def open_holds(engine: Engine, n: int, users: int) -> None:
    """``n`` holds with a 1 s lease, 8 reserves in flight."""

    async def slot(k: int) -> None:
        for i in range(k, n, 8):
            grant = await engine.reserve(
                ReserveRequest(
                    org=ORG,
                    model="claude-haiku-4-5",
                    input_tokens=1000,
                    max_tokens=400,
                    user=f"user-{i * 7919 % users:06d}",
                    feature=f"feature-{i % 20:02d}",
                    reservation_id=f"hold-{i:06d}",
                    ttl_s=1,
                )
            )
            assert isinstance(grant, Grant), grant

    await asyncio.gather(*(slot(k) for k in range(8)))


def seed_archive(sync: redis.Redis, fields: int, users: int) -> None:
    """Archive sums of user-day counters of 90-60 days ago (long past their expiry)."""
    day0 = time.time() - 90 * 86_400
    per_day = max(1, fields // 30)
    pipe = sync.pipeline(transaction=False)
    for i in range(fields):
        day = time.strftime("%Y-%m-%d", time.gmtime(day0 + (i // per_day) * 86_400))
        field = keys.budget_field("user-day", f"user-{i % users:06d}") + "|s"
        pipe.hset(keys.ledger_archive(ORG), keys.charged(keys.counters(ORG, day), field), 1234)
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def failing(run: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    """``run``, whose error is its result (a job that fails at this scale is a finding)."""

    async def run_or_fail() -> Any:
        try:
            return await run()
        except Exception as exc:
            return f"failed: {type(exc).__name__}: {str(exc)[:80]}"

    return run_or_fail


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--hour", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--holds", type=int, default=5_000)
    parser.add_argument("--archive", type=int, default=300_000)
    parser.add_argument("--slower-than", type=int, default=0, help="SLOWLOG threshold, µs")
    parser.add_argument("--verbose", action="store_true", help="commands by name")
    parser.add_argument("--only", default="", help="comma-separated job names")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(Path(tmp) / "redis")
        try:
            policies = Path(tmp) / "policies"
            policies.mkdir()
            (policies / f"{ORG}.yaml").write_text(POLICY)
            registry = PolicyRegistry(policies, ROOT / "policies" / "pricing.yaml")
            assert registry.reload().ok
            store = redis_store(server.url, timeout_s=60)
            engine = Engine(registry, store, SystemClock(), Metrics())
            queue = EventQueue(store)
            settings = Settings(ledger_retention_days=32, ledger_export_dir=Path(tmp) / "export")
            jobs = Jobs(engine, queue, settings, None)
            sync = redis.Redis.from_url(server.url)
            t0 = time.perf_counter()
            now_ms = int(time.time() * 1000)
            seed(sync, args.entries, args.users, 60 * 86_400_000, now_ms - HOUR_MS)
            seed(sync, args.hour, args.users, HOUR_MS - 1000, now_ms - 1000)
            seed_archive(sync, args.archive, args.users)
            await follower.follow(store, ORG, engine.policy(ORG).tz)
            freeze_built_app()  # as every serving process does (what is built, not what jobs make)
            print(
                f"seeded {args.entries + args.hour:,} ledger entries ({args.hour:,} in the last "
                f"hour), {args.users:,} users, {args.archive:,} archive sums, reports folded, "
                f"in {time.perf_counter() - t0:.0f} s; load {load_average()}"
            )

            async def close_month() -> int:
                return await close_periods(engine, queue, ORG, "month", engine.clock.now())

            async def new_entries() -> None:
                seed(sync, 15_000, args.users, 4_000, int(time.time() * 1000))

            async def expired_holds() -> None:
                await open_holds(engine, args.holds, args.users)
                await asyncio.sleep(1.5)  # the leases run out

            async def nothing() -> None:
                pass

            async def busy_floor() -> int:
                """No job: 1 ms of CPU between turns for 2 s. What a job that yields every
                ms shows on this machine (under ``chrt -r``, the kernel throttles a process
                that has run 0.95 s of a second in real time: a ~50 ms stall of its own)."""
                end = time.perf_counter() + 2
                steps = 0
                while time.perf_counter() < end:
                    step_end = time.perf_counter() + 0.001
                    while time.perf_counter() < step_end:
                        pass
                    steps += 1
                    await asyncio.sleep(0)
                return steps

            # (job, what it finds waiting (not measured), the job's run)
            cases: list[tuple[str, Callable[[], Awaitable[None]], Callable[[], Awaitable[Any]]]] = [
                ("floor (no job: 1 ms steps for 2 s)", nothing, busy_floor),
                ("reports (15,000 new entries)", new_entries, jobs.follow_ledgers),
                ("forecast", nothing, jobs.forecast),
                ("spike", nothing, jobs.spikes),
                ("digest", nothing, jobs.digests),
                ("period close (month)", nothing, close_month),
                ("delivery", nothing, jobs.deliver),
                (f"sweep ({args.holds:,} expired holds)", expired_holds, jobs.sweep),
                ("ledger retention (32 days)", nothing, jobs.retention),
            ]
            only = {o.strip() for o in args.only.split(",") if o.strip()}
            print(
                "| job | loop stall ms | stalls > 5 ms | longest GC ms (gen) "
                "| Redis stall ms (command) | wall s | commands | result | load | steal |"
            )
            print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
            for name, prepare, run in cases:
                if only and name.split()[0] not in only:
                    continue
                await prepare()
                s = await measure(sync, failing(run), args.slower_than)
                print(
                    f"| {name} | {s.loop_ms:.1f} | {s.stalls_over_5ms} "
                    f"| {s.gc_ms:.1f} ({s.gc_generation}) "
                    f"| {s.redis_ms:.1f} ({s.redis_command}) "
                    f"| {s.wall_s:.2f} | {len(s.commands):,} | {s.result} | {s.load} "
                    f"| {s.steal:.1%} |",
                    flush=True,
                )
                if args.verbose:
                    counts = collections.Counter(n for n, _ in s.commands)
                    slow = sorted(s.commands, key=lambda c: -c[1])[:5]
                    print(f"    commands {dict(counts.most_common(6))}; longest {slow}")
            await jobs.deliverer.close()
            await store.close()
        finally:
            server.stop()


if __name__ == "__main__":
    uvloop.run(main())
