"""Benchmark: the Redis work of one reserve + commit pair, counted and timed inside Redis.

    .venv/bin/python bench/redis_work.py [--pairs 600] [--concurrency 8] [--users 50]

It starts its own ``redis-server`` (loopback, free port, no persistence; removed on exit) and
drives ``budgetd.engine.Engine`` directly (no HTTP: only the Redis side is measured) for two
policies:

  * ``bench``: the policy of ``bench/reserve_commit.py`` (3 budgets, 2 rate limits × 3 kinds: 9
    scopes per call), model ``claude-sonnet-5-5`` (the bench's ``MODEL``);
  * ``example``: the shipped ``policies/example.yaml``, a ``claude-haiku-5-5`` call of a user of
    feature ``chat`` (4 budgets, one a rolling 24h window, and 2 rate limits).

For each: a warm-up pass makes every user's keys exist; then ``--pairs`` reserves alone and the
same number of commits alone, each phase between two ``INFO commandstats`` snapshots, give the
``redis.call``s per script (counts: they do not depend on the machine's load); then ``--pairs``
reserve→commit pairs at ``--concurrency`` in flight give Redis's process CPU per pair
(``used_cpu_user + used_cpu_sys`` delta / pairs), with the load average and the CPU steal of the
run next to it (the machine may be shared). Last, the calls of one pair are replayed 1, 8 and 100
pairs per socket read (what batching does to Redis's CPU), and a PING one per read and 100 per
read gives the I/O floor of a request on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from budgetd.clock import SystemClock
from budgetd.contract import CommitRequest, Grant, ReserveRequest
from budgetd.engine import Engine
from budgetd.metrics import Metrics
from budgetd.policy.registry import PolicyRegistry
from budgetd.store.connect import redis_store
from budgetd.usage import Usage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import load_average, steal_ticks  # noqa: E402
from _servers import throwaway_redis  # noqa: E402
from reserve_commit import MODEL as BENCH_MODEL  # noqa: E402
from reserve_commit import ORG as BENCH_ORG  # noqa: E402
from reserve_commit import POLICY as BENCH_POLICY  # noqa: E402

CASES = {
    "bench": (BENCH_ORG, BENCH_POLICY, BENCH_MODEL),
    "example": (
        "acme-research",
        (ROOT / "policies" / "example.yaml").read_text(),
        "claude-haiku-5-5",
    ),
}
REPLAYED = 36  # pairs replayed per batch size (3 sizes): all under the example policy's 120
# requests/min a user
NOT_SCRIPT_CALLS = {"evalsha", "eval", "info", "config", "script", "ping", "client", "hello"}
USAGE = Usage(input_tokens=900, output_tokens=150)  # what every bench commit reports
ScriptCall = tuple[str, str, list[str], list[Any]]  # sha, source, keys, args


def bench_request(org: str, user: str, model: str, rid: str) -> ReserveRequest:
    """The reserve every pair of these benches makes (feature ``chat``, 1,000 in, 200 max out)."""
    return ReserveRequest(
        org=org,
        user=user,
        feature="chat",
        model=model,
        input_tokens=1000,
        max_tokens=200,
        reservation_id=rid,
    )


def bench_engine(name: str, port: int, tmp: Path, timeout_s: float = 10.0) -> Engine:
    """An engine on the Redis at ``port`` with the policy of case ``name`` (written under
    ``tmp``) and the shipped price table."""
    _, policy, _ = CASES[name]
    # The example policy signs one webhook with this variable's secret; nothing is sent here.
    os.environ.setdefault("BUDGETD_WEBHOOK_SECRET", "bench-only-secret")
    pdir = tmp / name
    pdir.mkdir()
    (pdir / "policy.yaml").write_text(policy)
    registry = PolicyRegistry(pdir, ROOT / "policies" / "pricing.yaml")
    status = registry.reload()
    assert status.ok, status.errors
    store = redis_store(f"redis://127.0.0.1:{port}/0", timeout_s=timeout_s)
    return Engine(registry, store, SystemClock(), Metrics())


@contextlib.contextmanager
def recording(engine: Engine) -> Iterator[list[ScriptCall]]:
    """The script calls ``engine`` makes inside the block, as it sends them."""
    pipeline: Any = engine.store.pipeline  # type: ignore[attr-defined]
    recorded: list[ScriptCall] = []
    real_call = pipeline.call

    async def record(
        sha: str, source: str, keys: list[str], args: list[Any], *, deadline: float
    ) -> Any:
        recorded.append((sha, source, list(keys), list(args)))
        return await real_call(sha, source, keys, args, deadline=deadline)

    pipeline.call = record
    try:
        yield recorded
    finally:
        pipeline.call = real_call


async def commandstats(engine: Engine, what: str = "calls") -> dict[str, int]:
    """Per command: its calls, or (``what="usec"``) the Redis CPU time spent in it."""
    info: dict[str, Any] = await engine.store.client.info("commandstats")  # type: ignore[attr-defined]
    return {k.removeprefix("cmdstat_"): int(v[what]) for k, v in info.items()}


async def redis_cpu(engine: Engine) -> float:
    info: dict[str, Any] = await engine.store.client.info("cpu")  # type: ignore[attr-defined]
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def per_call(before: dict[str, int], after: dict[str, int], n: int) -> dict[str, float]:
    out = {}
    for cmd, calls in after.items():
        if cmd in NOT_SCRIPT_CALLS:
            continue
        delta = calls - before.get(cmd, 0)
        if delta:
            out[cmd.upper()] = round(delta / n, 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


async def replayed_pairs(
    engine: Engine,
    reserve: Callable[[int, str], Awaitable[None]],
    commit: Callable[[str], Awaitable[None]],
    pairs: int,
    seq: int,
    batches: tuple[int, ...],
) -> dict[int, float]:
    """Redis CPU per pair when the same two script calls arrive ``batch`` pairs per socket read
    (1: one request per read and reply, as an unbatched client sends them; 100: 200 commands
    per read): what the scripts cost with and without a read and write per call. The calls of
    one real pair are recorded and replayed with fresh reservation ids."""
    rid = f"replay{seq}"
    with recording(engine) as recorded:
        await reserve(0, rid)
        await commit(rid)
    client: Any = engine.store.client  # type: ignore[attr-defined]

    def fresh(value: str | int, new: str) -> str | int:
        if isinstance(value, str) and (value == rid or value.endswith(":r:" + rid)):
            return value[: len(value) - len(rid)] + new
        return value

    out = {}
    for batch in batches:
        cpu0 = await redis_cpu(engine)
        for start in range(0, pairs, batch):
            if batch == 1:
                new = f"{rid}-{batch}-{start}"
                for sha, _, keys, args in recorded:
                    keys_ = [fresh(k, new) for k in keys]
                    reply = await client.evalsha(
                        sha, len(keys_), *keys_, *(fresh(a, new) for a in args)
                    )
                    assert reply[0] in ("granted", "committed"), reply
                continue
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(pairs, start + batch)):
                new = f"{rid}-{batch}-{i}"
                for sha, _, keys, args in recorded:
                    keys_ = [fresh(k, new) for k in keys]
                    pipe.evalsha(sha, len(keys_), *keys_, *(fresh(a, new) for a in args))
            for reply in await pipe.execute():
                assert reply[0] in ("granted", "committed"), reply
        out[batch] = round((await redis_cpu(engine) - cpu0) / pairs * 1e6, 1)
    return out


async def ping_floor(engine: Engine, n: int = 2000) -> dict[str, float]:
    """Redis CPU per PING: one per read and reply (the I/O every unbatched request costs), and
    100 per read (what is left of it when requests arrive batched)."""
    client: Any = engine.store.client  # type: ignore[attr-defined]
    cpu0 = await redis_cpu(engine)
    for _ in range(n):
        await client.ping()
    cpu1 = await redis_cpu(engine)
    for _ in range(n // 100):
        pipe = client.pipeline(transaction=False)
        for _ in range(100):
            pipe.ping()
        await pipe.execute()
    cpu2 = await redis_cpu(engine)
    return {
        "ping_us_one_per_read": round((cpu1 - cpu0) / n * 1e6, 1),
        "ping_us_100_per_read": round((cpu2 - cpu1) / n * 1e6, 1),
    }


async def run_slots(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> None:
    counter = itertools.count()

    async def slot() -> None:
        while (i := next(counter)) < n:
            await one(i)

    await asyncio.gather(*(slot() for _ in range(concurrency)))


async def measure(
    name: str, port: int, pairs: int, concurrency: int, users: int, tmp: Path
) -> dict[str, Any]:
    org, _, model = CASES[name]
    engine = bench_engine(name, port, tmp)
    run = itertools.count()

    async def reserve(i: int, rid: str) -> None:
        grant = await engine.reserve(bench_request(org, f"user-{i % users}", model, rid))
        assert isinstance(grant, Grant), grant

    async def commit(rid: str) -> None:
        await engine.commit(org, rid, CommitRequest(usage=USAGE))

    async def pair(i: int) -> None:
        rid = f"p{next(run)}"
        await reserve(i, rid)
        await commit(rid)

    await run_slots(users * 2, concurrency, pair)  # every user's keys exist
    # Counts per script: reserves alone, then their commits alone.
    rids = [f"c{next(run)}" for _ in range(pairs)]
    s0 = await commandstats(engine)
    await run_slots(pairs, concurrency, lambda i: reserve(i, rids[i]))
    s1 = await commandstats(engine)
    await run_slots(pairs, concurrency, lambda i: commit(rids[i]))
    s2 = await commandstats(engine)
    # CPU per pair at `concurrency` in flight.
    load_before = load_average()
    steal0, total0 = steal_ticks()
    cpu0 = await redis_cpu(engine)
    usec0 = await commandstats(engine, "usec")
    started = time.perf_counter()
    await run_slots(pairs, concurrency, pair)
    wall = time.perf_counter() - started
    usec1 = await commandstats(engine, "usec")
    cpu1 = await redis_cpu(engine)
    steal1, total1 = steal_ticks()

    async def reserve_alone(_: int, rid: str) -> None:
        # A user of its own: the replayed holds must all be granted (the example policy's
        # per-user rate is 120 requests a minute).
        grant = await engine.reserve(bench_request(org, "replay-user", model, rid))
        assert isinstance(grant, Grant), grant

    replayed = await replayed_pairs(engine, reserve_alone, commit, REPLAYED, next(run), (1, 8, 100))
    floor = await ping_floor(engine)
    await engine.store.close()
    reserve_calls, commit_calls = per_call(s0, s1, pairs), per_call(s1, s2, pairs)
    return {
        "policy": name,
        "calls_per_reserve": round(sum(reserve_calls.values()), 2),
        "calls_per_commit": round(sum(commit_calls.values()), 2),
        "reserve": reserve_calls,
        "commit": commit_calls,
        "redis_cpu_us_per_pair": round((cpu1 - cpu0) / pairs * 1e6, 1),
        # Of the scripts' time (EVALSHA's usec, wall clock inside Redis, so inflated on a
        # loaded machine), the share spent inside their redis.calls; the rest is Lua itself
        # (argument parsing, the plan's JSON, string building) and the script call overhead.
        "share_in_redis_calls": round(
            sum(usec1[c] - usec0.get(c, 0) for c in usec1 if c not in NOT_SCRIPT_CALLS)
            / max(1, usec1["evalsha"] - usec0["evalsha"]),
            2,
        ),
        "pairs_per_s": round(pairs / wall),
        # The same pairs replayed 1, 8 and 100 pairs per socket read.
        "replayed_redis_cpu_us_per_pair_by_batch": replayed,
        "pipelined_redis_cpu_us_per_pair": replayed[100],
        **floor,
        "load_average_before_after": [load_before, load_average()],
        "steal_pct": round(100 * (steal1 - steal0) / max(1, total1 - total0), 1),
    }


async def main_async(args: argparse.Namespace, port: int, tmp: Path) -> None:
    for name in args.policies:
        result = await measure(name, port, args.pairs, args.concurrency, args.users, tmp)
        print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--policies", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    args = parser.parse_args()
    server = shutil.which("redis-server")
    if not server:
        raise SystemExit("redis-server is not on PATH")
    with tempfile.TemporaryDirectory() as tmp, throwaway_redis(server, tmp) as port:
        asyncio.run(main_async(args, port, Path(tmp)))


if __name__ == "__main__":
    main()
