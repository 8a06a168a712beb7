"""Profile: the service's own CPU per reserve→commit pair, in process, without an HTTP server.

    .venv/bin/python bench/app_profile.py [--pairs 4000] [--concurrency 8] [--rounds 3]
                                          [--profile] [--top 40]

It starts its own ``redis-server`` (loopback, free port, no persistence; removed on exit),
builds the app as ``budgetd.asgi`` does (``create_app(from_env())``) with the policy, price
table and API key of ``bench/reserve_commit.py``, and drives its ASGI callable directly with the
same request bodies: no socket, no HTTP parsing, no uvicorn. What it measures is what budgetd's
code (instrumentation, fast path, engine, store client) costs per request, with much less noise
than the HTTP bench, whose figure also holds uvicorn's and the event loop's share.

Each round runs ``--pairs`` pairs at ``--concurrency`` in flight, then folds the round's ledger
entries into the reports (the follower job, which the service runs every 5 s: off here, so that
it lands in every round alike rather than in some), and reports this process's CPU per request
(``time.process_time``), the follower's share included and also shown per ledger entry; Redis
runs in its own process and is not counted.
``--profile`` runs one more round under cProfile and prints the ``--top`` functions by their
own time, then by their cumulative time (cProfile's overhead inflates every call; read it for
shares, not for µs).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from budgetd.app import create_app
from budgetd.auth import key_line, new_key
from budgetd.reports.follower import follow
from budgetd.settings import from_env

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import load_average, steal_ticks
from _servers import throwaway_redis
from reserve_commit import MODEL, ORG, POLICY, PRICING

HOST = "127.0.0.1"
COMMIT_BODY = (
    b'{"model":"%s","usage":{"input_tokens":1180,"cache_creation_input_tokens":0,'
    b'"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":0,'
    b'"ephemeral_1h_input_tokens":0},"output_tokens":412,"service_tier":"standard"}}'
) % MODEL.encode()
USERS, FEATURES = 100, 10


def reserve_body(rid: str, n: int) -> bytes:
    return (
        b'{"org":"%s","user":"user-%d","feature":"feature-%d","model":"%s",'
        b'"input_tokens":1200,"max_tokens":1024,"reservation_id":"%s"}'
        % (ORG.encode(), n % USERS, n % FEATURES, MODEL.encode(), rid.encode())
    )


async def request(app: Any, key: str, path: str, query: bytes, body: bytes) -> int:
    """One POST through the ASGI app; its status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer " + key.encode()),
            (b"content-length", b"%d" % len(body)),
        ],
        "client": (HOST, 1),
        "server": (HOST, 80),
        "state": {},
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def pairs(app: Any, key: str, n: int, concurrency: int, tag: str) -> None:
    counter = itertools.count()

    async def slot() -> None:
        while (i := next(counter)) < n:
            rid = f"{tag}-{i}"
            reserved = await request(app, key, "/v1/reservations", b"", reserve_body(rid, i))
            committed = await request(
                app,
                key,
                f"/v1/reservations/{rid}/commit",
                b"org=" + ORG.encode(),
                COMMIT_BODY,
            )
            assert (reserved, committed) == (201, 200), (reserved, committed)

    await asyncio.gather(*(slot() for _ in range(concurrency)))


async def round_cpu(app: Any, key: str, args: argparse.Namespace, tag: str) -> tuple[float, float]:
    """One round: (CPU µs per request, the follower included; the follower's µs per entry)."""
    cpu0 = time.process_time()
    await pairs(app, key, args.pairs, args.concurrency, tag)
    cpu1 = time.process_time()
    engine = app.state.engine
    folded = await follow(engine.store, ORG, engine.policy(ORG).tz)
    cpu2 = time.process_time()
    return (cpu2 - cpu0) / (2 * args.pairs) * 1e6, (cpu2 - cpu1) / max(1, folded) * 1e6


async def run(
    args: argparse.Namespace, key: str
) -> tuple[list[tuple[float, float]], pstats.Stats | None]:
    app = create_app(from_env())
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put)
    )
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    assert started["type"] == "lifespan.startup.complete", started
    try:
        await pairs(app, key, 1000, args.concurrency, "warm")
        engine = app.state.engine
        await follow(engine.store, ORG, engine.policy(ORG).tz)
        figures = [await round_cpu(app, key, args, f"r{r}") for r in range(args.rounds)]
        stats = None
        if args.profile:
            profiler = cProfile.Profile(time.process_time)  # CPU, not the idle loop
            profiler.enable()
            await round_cpu(app, key, args, "prof")
            profiler.disable()
            stats = pstats.Stats(profiler)
        return figures, stats
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await lifespan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    redis_server = shutil.which("redis-server") or shutil.which("valkey-server")
    if redis_server is None:
        raise SystemExit("redis-server is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        policies = Path(tmp) / "policies"
        policies.mkdir()
        (policies / f"{ORG}.yaml").write_text(POLICY)
        shutil.copy(PRICING, policies / "pricing.yaml")
        key = new_key()
        (Path(tmp) / "keys.yaml").write_text("keys:\n" + key_line(key, ORG, "app", "bench") + "\n")
        for name in [k for k in os.environ if k.startswith("BUDGETD_")]:
            del os.environ[name]
        with throwaway_redis(redis_server, tmp, "--maxmemory-policy", "noeviction") as port:
            os.environ.update(
                BUDGETD_REDIS_URL=f"redis://{HOST}:{port}/0",
                BUDGETD_POLICY_DIR=str(policies),
                BUDGETD_KEYS_FILE=str(Path(tmp) / "keys.yaml"),
                BUDGETD_POLICY_POLL_S="0",
                BUDGETD_SWEEP_INTERVAL_S="0",
                BUDGETD_REPORTS_INTERVAL_S="0",  # folded in each round instead
            )
            print(f"load average {load_average()} at start; {os.cpu_count()} CPUs", flush=True)
            steal0, total0 = steal_ticks()
            figures, stats = uvloop.run(run(args, key))
            steal1, total1 = steal_ticks()
    steal_pct = 100 * (steal1 - steal0) / max(1, total1 - total0)
    per_request = [f for f, _ in figures]
    per_entry = [e for _, e in figures]
    print(
        f"app CPU per request, {args.pairs} pairs x {args.rounds} rounds at "
        f"{args.concurrency} in flight: median {statistics.median(per_request):.1f} µs "
        f"[{', '.join(f'{f:.1f}' for f in per_request)}]; of which the follower "
        f"{statistics.median(per_entry):.1f} µs per ledger entry "
        f"[{', '.join(f'{e:.1f}' for e in per_entry)}]"
    )
    print(f"load average {load_average()} at end; CPU steal during the run {steal_pct:.1f} %")
    if stats is not None:
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
