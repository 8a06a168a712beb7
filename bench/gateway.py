"""Benchmark: what ``budgetd gateway`` adds over calling (fake) Anthropic directly.

    .venv/bin/python bench/gateway.py [--requests 3000] [--rounds 3] [--stream-mb 10]

What it starts (loopback, free ports, a temp dir removed on exit): its own ``redis-server``;
the fake Anthropic upstream of tests/gateway (uvicorn, httptools, uvloop); ``budgetd gateway``
(one worker, Redis store, a roomy policy) in front of it. The same aiohttp client drives both
targets with the same requests, in alternating rounds (direct, gateway, direct, …) so that
drift in the machine's load falls on both.

Figures:
* latency of a non-streaming ``POST /v1/messages`` at 8 and 64 in flight (closed loop: each
  slot sends its next request when the last one is answered): p50 / p99 direct and through the
  gateway, and the difference (what the gateway adds: auth, the core's plan, a reserve and a
  commit on Redis, the extra hop). A closed loop saturates the slower target, so this is mostly
  queueing in front of a busy CPU;
* time to first streamed byte of a streaming call (8 in flight): direct vs gateway;
* the same two at a paced open-loop rate (``--rate``): the latency of one call when the
  gateway is not saturated;
* the gateway's RSS while one 10 MB stream passes through to a slow reader: before, peak, after;
* throughput per core: gateway requests per second of its own CPU time at 64 in flight.

``--clients`` instead compares the two HTTP clients the gateway could use upstream (httpx and
aiohttp, both keep-alive, 8 and 64 in flight, streaming calls read to the end) against the
fake directly: why the gateway uses aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.gateway.procs import (
    ROOT,
    UPSTREAM_KEY,
    Server,
    start_fake_upstream,
    start_gateway,
)
from tests.servers import start_redis

from budgetd.auth import digest, new_key

POLICY = """
org: bench
timezone: UTC
defaults: {hold_ttl_s: 600}
budgets:
  - {name: org-month, scope: org, limit_usd: 100000000, period: month}
  - {name: user-day, scope: user, limit_usd: 100000000, period: day}
"""
BODY = (
    b'{"model":"claude-haiku-4-5","max_tokens":256,'
    b'"messages":[{"role":"user","content":"Hello, how are you today?"}]}'
)
STREAM_BODY = BODY[:-1] + b',"stream":true}'


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    body: bytes,
    requests: int,
    in_flight: int,
    first_byte: bool = False,
) -> list[float]:
    """Seconds per request (or to its first body byte), ``in_flight`` at a time."""
    times: list[float] = []
    left = requests

    async def slot() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            start = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                if first_byte:
                    await response.content.readany()
                    times.append(time.perf_counter() - start)
                    async for _ in response.content.iter_any():
                        pass
                else:
                    await response.read()
                    times.append(time.perf_counter() - start)
                if response.status != 200:
                    raise RuntimeError(f"{url}: {response.status} {await response.text()}")

    await asyncio.gather(*(slot() for _ in range(in_flight)))
    return times


async def paced(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    body: bytes,
    requests: int,
    rate: float,
    first_byte: bool = False,
) -> list[float]:
    """Seconds per request when requests *start* at ``rate`` per second (an open loop: a slow
    answer does not slow the arrivals), so the figure is the latency of one request on a server
    that is not saturated, not the queue in front of a busy one."""
    times: list[float] = []

    async def one() -> None:
        times.extend(await load(session, url, headers, body, 1, 1, first_byte))

    start = time.perf_counter()
    tasks = []
    for i in range(requests):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return times


async def alternate(
    rounds: int, run: Callable[[str], Awaitable[list[float]]], targets: dict[str, str]
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, url in targets.items():
            out[name] += await run(url)
    return out


def report(title: str, times: dict[str, list[float]]) -> None:
    direct, gateway = times["direct"], times["gateway"]
    line = f"{title:<34}"
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        d, g = pct(direct, q) * 1e3, pct(gateway, q) * 1e3
        line += f"  {label} direct {d:6.2f} ms  gateway {g:6.2f} ms  added {g - d:+6.2f} ms |"
    print(line.rstrip(" |"), flush=True)


async def stream_memory(gateway: Server, key: str, megabytes: int) -> None:
    """One stream of ``megabytes`` through the gateway to a reader that takes its time."""
    text = f"big [fake:bytes={megabytes * 1_000_000}]"
    body = (
        b'{"model":"claude-haiku-4-5","max_tokens":256,"stream":true,'
        b'"messages":[{"role":"user","content":"' + text.encode() + b'"}]}'
    )
    pid = gateway.proc.pid
    before = rss_kb(pid)
    peak = before
    received = 0
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/v1/messages",
            data=body,
            headers={"x-api-key": key, "content-type": "application/json"},
        ) as response,
    ):
        async for chunk in response.content.iter_chunked(64 * 1024):
            received += len(chunk)
            peak = max(peak, rss_kb(pid))
            await asyncio.sleep(0.002)  # a slow reader: the gateway must not pile it up
    await asyncio.sleep(0.5)
    after = rss_kb(pid)
    print(
        f"{received / 1e6:.1f} MB stream to a slow reader: gateway RSS before {before / 1024:.1f} "
        f"MiB, peak {peak / 1024:.1f} MiB (+{(peak - before) / 1024:.1f}), "
        f"after {after / 1024:.1f} MiB",
        flush=True,
    )


async def main_async(args: argparse.Namespace, upstream: Server, gateway: Server, key: str) -> None:
    direct_headers = {"x-api-key": UPSTREAM_KEY, "content-type": "application/json"}
    gateway_headers = {"x-api-key": key, "content-type": "application/json"}
    targets = {"direct": upstream.url + "/v1/messages", "gateway": gateway.url + "/v1/messages"}
    headers = {targets["direct"]: direct_headers, targets["gateway"]: gateway_headers}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for in_flight in (8, 64):
            n = args.requests

            async def run(url: str, n: int = n, in_flight: int = in_flight) -> list[float]:
                return await load(session, url, headers[url], BODY, n, in_flight)

            await alternate(1, run, targets)  # warm-up: connections, caches
            report(
                f"POST /v1/messages, {in_flight} in flight",
                await alternate(args.rounds, run, targets),
            )

        async def ttfb(url: str) -> list[float]:
            return await load(session, url, headers[url], STREAM_BODY, args.requests // 2, 8, True)

        report("stream first byte, 8 in flight", await alternate(args.rounds, ttfb, targets))

        n_paced = int(args.rate * args.paced_s)

        async def open_loop(url: str) -> list[float]:
            return await paced(session, url, headers[url], BODY, n_paced, args.rate)

        async def open_ttfb(url: str) -> list[float]:
            return await paced(session, url, headers[url], STREAM_BODY, n_paced, args.rate, True)

        report(
            f"POST, open loop {args.rate:.0f}/s", await alternate(args.rounds, open_loop, targets)
        )
        report(
            f"first byte, open loop {args.rate:.0f}/s",
            await alternate(args.rounds, open_ttfb, targets),
        )

        pid = gateway.proc.pid
        start_cpu, start = cpu_s(pid), time.perf_counter()
        done = await load(session, targets["gateway"], gateway_headers, BODY, args.requests * 2, 64)
        used, wall = cpu_s(pid) - start_cpu, time.perf_counter() - start
        print(
            f"throughput at 64 in flight: {len(done) / wall:.0f} req/s wall; gateway CPU "
            f"{used:.2f} s for {len(done)} requests = {len(done) / used:.0f} req per CPU-second "
            f"(one worker, one core)",
            flush=True,
        )
    await stream_memory(gateway, key, args.stream_mb)


async def compare_clients(upstream: Server, requests: int) -> None:
    import httpx  # noqa: PLC0415 (only this mode needs it)

    url = upstream.url + "/v1/messages"
    headers = {"x-api-key": UPSTREAM_KEY, "content-type": "application/json"}

    async def run(call: Callable[[], Awaitable[None]], in_flight: int) -> list[float]:
        times: list[float] = []
        left = requests

        async def slot() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                start = time.perf_counter()
                await call()
                times.append(time.perf_counter() - start)

        await asyncio.gather(*(slot() for _ in range(in_flight)))
        return times

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits) as hx:

        async def with_httpx() -> None:
            async with hx.stream("POST", url, content=STREAM_BODY, headers=headers) as r:
                async for _ in r.aiter_raw():
                    pass

        for in_flight in (8, 64):
            await run(with_httpx, in_flight)
            start = time.perf_counter()
            t = await run(with_httpx, in_flight)
            rate = len(t) / (time.perf_counter() - start)
            print(
                f"httpx   {in_flight:>2} in flight: {rate:5.0f} calls/s  p50 "
                f"{pct(t, 0.5) * 1e3:6.2f} ms  p99 {pct(t, 0.99) * 1e3:6.2f} ms",
                flush=True,
            )
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as ah:

        async def with_aiohttp() -> None:
            async with ah.post(url, data=STREAM_BODY, headers=headers) as r:
                async for _ in r.content.iter_any():
                    pass

        for in_flight in (8, 64):
            await run(with_aiohttp, in_flight)
            start = time.perf_counter()
            t = await run(with_aiohttp, in_flight)
            rate = len(t) / (time.perf_counter() - start)
            print(
                f"aiohttp {in_flight:>2} in flight: {rate:5.0f} calls/s  p50 "
                f"{pct(t, 0.5) * 1e3:6.2f} ms  p99 {pct(t, 0.99) * 1e3:6.2f} ms",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="per target, round and load")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stream-mb", type=int, default=10)
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop requests per second")
    parser.add_argument("--paced-s", type=float, default=10.0, help="open-loop seconds per round")
    parser.add_argument("--clients", action="store_true", help="compare httpx and aiohttp only")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" load average {os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        work = Path(tmp)
        policies = work / "policies"
        policies.mkdir()
        (policies / "pricing.yaml").write_text((ROOT / "policies" / "pricing.yaml").read_text())
        (policies / "bench.yaml").write_text(POLICY)
        key = new_key()
        entry = f"  - sha256: {digest(key)}\n    org: bench\n    user: bench-user\n"
        (work / "keys.yaml").write_text("keys:\n" + entry)
        if args.clients:
            upstream = start_fake_upstream(work)
            try:
                asyncio.run(compare_clients(upstream, args.requests))
            finally:
                upstream.stop()
            return
        redis = start_redis(work / "redis")
        upstream = start_fake_upstream(work)
        gateway = None
        try:
            gateway = start_gateway(
                work,
                {
                    "BUDGETD_REDIS_URL": redis.url,
                    "BUDGETD_POLICY_DIR": str(policies),
                    "BUDGETD_KEYS_FILE": str(work / "keys.yaml"),
                    "BUDGETD_POLICY_POLL_S": "0",
                    "BUDGETD_SWEEP_INTERVAL_S": "0",
                    "BUDGETD_DELIVERY_INTERVAL_S": "0",
                    "BUDGETD_GATEWAY_UPSTREAM_URL": upstream.url,
                    "BUDGETD_GATEWAY_UPSTREAM_KEY": UPSTREAM_KEY,
                },
            )
            asyncio.run(main_async(args, upstream, gateway, key))
        finally:
            if gateway is not None:
                gateway.stop()
            upstream.stop()
            redis.stop()
    print(f"load average {os.getloadavg()[0]:.2f} at end", flush=True)


if __name__ == "__main__":
    main()
