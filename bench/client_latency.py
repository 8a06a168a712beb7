"""Benchmark: what budgetd adds to an app's Claude call, as the app feels it (issue 13).

    .venv/bin/python bench/client_latency.py [--rounds 3] [--duration 5] [--concurrency 8]

An app calls a fake Claude upstream on loopback (a Messages API answer with ``usage``, sent
``--delay`` seconds after the request) through the real ``anthropic`` SDK, ``--concurrency``
calls in flight, in three ways for each of the sync client (threads) and the async one (tasks):

  * ``direct``: the SDK straight to the upstream: the baseline;
  * ``guarded``: ``budgetd_client.guard(...)``: reserve → upstream → commit, the commit inside
    the call (the default);
  * ``guarded, background commit``: the same with ``settle="background"``: the app gets its
    response while the commit is sent by the client's background settler.

"Added" is the guarded call's latency minus the direct call's, at p50 and at p99 (goal: ≤ 1 ms
and ≤ 3 ms). Per call, the bench also times the SDK's request to the upstream (at the
transport), so "outside upstream" is what a call spent anywhere else (SDK, guard, budgetd), and
its guarded-minus-direct difference is a second estimate of the same thing, per call; the
goal is reported met only when both estimates meet it.
Reserve and commit are timed around the budgetd client's own calls.

What it starts (loopback, free ports, removed on exit): a ``redis-server`` (real Redis, no
persistence), budgetd (``uvicorn budgetd.asgi:app``, one worker, uvloop + httptools, the
policy of ``bench/reserve_commit.py``: 9 scopes per call), and the fake upstream (this file
with ``--upstream``, a subprocess on uvloop). Nothing is pinned: the app, budgetd and Redis
share the machine's CPUs as they would on one host; the machine's load is printed with each
figure (CPU steal, the 1-minute load average, and the busy time of the CPUs outside the
processes this bench started).

``--awake`` keeps every CPU awake for the run: one ``SCHED_IDLE`` spinner per CPU
(``bench/_machine.py``, ``AwakeCores``), so a wake-up is a context switch on a running core, not
a halted vCPU resumed by the hypervisor. The spinners' CPU is reported apart ("spin"), not as
the neighbours'; "halts/s" counts the CPUs' entries into a halting idle state (≈ 0 when awake).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import uvloop
from budgetd_client import AsyncBudgetdClient, BudgetdClient, guard

from _machine import AwakeCores, cpuidle, halts, steal_ticks
from budgetd.auth import key_line, new_key
from reserve_commit import (
    HOST,
    MODEL,
    ORG,
    POLICY,
    PRICING,
    Processes,
    cpu_busy_s,
    free_port,
    http_ok,
    pct,
    process_cpu_s,
    redis_pings,
    uvicorn_cmd,
    wait_until,
)

# The bench policy's model is past its deprecation notice; the SDK warns on every call.
warnings.filterwarnings("ignore", category=DeprecationWarning, module="anthropic")
warnings.filterwarnings("ignore", message="The model .* is deprecated")

GOAL_P50_MS = 1.0
GOAL_P99_MS = 3.0
USERS = 1000
FEATURES = 20
MESSAGES = [{"role": "user", "content": "Summarise the attached meeting notes in three lines."}]

# -- the fake upstream (run as its own process) ------------------------------------------------

REPLY = json.dumps(
    {
        "id": "msg_01BenchBenchBench",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Three lines: a, b, c."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 1180,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 412,
            "service_tier": "standard",
        },
    },
    separators=(",", ":"),
).encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nrequest-id: req_bench\r\n"
    + f"content-length: {len(REPLY)}\r\n\r\n".encode()
    + REPLY
)


class Upstream(asyncio.Protocol):
    """HTTP/1.1 keep-alive, one request at a time per connection, Content-Length bodies: every
    request is answered with ``RESPONSE`` after the delay."""

    delay_s = 0.2
    jitter = 0.0

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self.buf[:end]).lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            delay = self.delay_s * (1.0 + self.jitter * (2.0 * random.random() - 1.0))
            asyncio.get_running_loop().call_later(delay, self._answer)

    def _answer(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(RESPONSE)


def serve_upstream(port: int, delay_s: float, jitter: float) -> None:
    Upstream.delay_s, Upstream.jitter = delay_s, jitter

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Upstream, HOST, port, backlog=512)
        await server.serve_forever()

    uvloop.run(main())


# -- timing hooks ------------------------------------------------------------------------------

_upstream_ns: contextvars.ContextVar[list[int]] = contextvars.ContextVar("upstream_ns")


class TimedTransport(httpx2.BaseTransport):
    """The SDK's transport to the upstream, timing each request up to its response head."""

    def __init__(self) -> None:
        self.inner = httpx2.HTTPTransport()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        t0 = time.perf_counter_ns()
        response = self.inner.handle_request(request)
        _upstream_ns.get().append(time.perf_counter_ns() - t0)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncTimedTransport(httpx2.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        t0 = time.perf_counter_ns()
        response = await self.inner.handle_async_request(request)
        _upstream_ns.get().append(time.perf_counter_ns() - t0)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Timings:
    """Latencies (ns) of one phase: whole calls, time outside the upstream, budgetd's calls."""

    call: list[int] = field(default_factory=list)
    outside: list[int] = field(default_factory=list)
    reserve: list[int] = field(default_factory=list)
    commit: list[int] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    app_cpu_s: float = 0.0
    """CPU time of the app (this process: SDK, guard, budgetd client) over the window."""
    budgetd_cpu_s: float = 0.0
    """CPU time of budgetd (the service process, not Redis) over the window."""
    measuring: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def merge(self, other: Timings) -> None:
        """Add another round's samples and CPU time to these."""
        for name in ("call", "outside", "reserve", "commit"):
            getattr(self, name).extend(getattr(other, name))
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error
        self.app_cpu_s += other.app_cpu_s
        self.budgetd_cpu_s += other.budgetd_cpu_s

    def add(self, into: list[int], ns: int) -> None:
        if self.measuring:
            with self.lock:
                into.append(ns)


class TimedBudgetd(BudgetdClient):
    """The sync client with its reserve and commit timed (what the guard calls)."""

    timings: Timings

    def reserve(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        t0 = time.perf_counter_ns()
        try:
            return super().reserve(*args, **kwargs)
        finally:
            self.timings.add(self.timings.reserve, time.perf_counter_ns() - t0)

    def commit(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        t0 = time.perf_counter_ns()
        try:
            return super().commit(*args, **kwargs)
        finally:
            self.timings.add(self.timings.commit, time.perf_counter_ns() - t0)


class AsyncTimedBudgetd(AsyncBudgetdClient):
    timings: Timings

    async def reserve(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        t0 = time.perf_counter_ns()
        try:
            return await super().reserve(*args, **kwargs)
        finally:
            self.timings.add(self.timings.reserve, time.perf_counter_ns() - t0)

    async def commit(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        t0 = time.perf_counter_ns()
        try:
            return await super().commit(*args, **kwargs)
        finally:
            self.timings.add(self.timings.commit, time.perf_counter_ns() - t0)


# -- phases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    upstream: str
    budgetd: str
    key: str
    concurrency: int
    warmup_s: float
    duration_s: float
    service_pid: int
    http: str
    """How the budgetd client reaches budgetd: ``own`` (its default pool) or ``httpx``."""
    delay_s: float
    lockstep: bool
    """Start every call at once (the bench before issue 13's background-settle fix)."""

    def start_after(self, slot: int) -> float:
        """When the ``slot``-th caller starts: spread over one upstream delay, as the calls of
        an app in steady state are. Started together against an upstream that answers every
        call after exactly the same delay, the calls stay in step for the whole phase, and
        each one's budgetd round trips wait for the app's event loop (or GIL) to finish the
        other calls' work: a property of the bench, not of an app."""
        return 0.0 if self.lockstep else self.delay_s * slot / self.concurrency

    def budgetd_options(self, kind: str) -> dict[str, Any]:
        if self.http == "own":
            return {}
        return {"http_client": httpx.Client() if kind == "sync" else httpx.AsyncClient()}


def call_kwargs(n: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": MESSAGES,
        "extra_headers": {
            "x-budgetd-user": f"user-{n % USERS}",
            "x-budgetd-feature": f"feature-{n % FEATURES}",
        },
    }


def measure(setup: Setup, timings: Timings) -> dict[str, Any]:
    """Count from the end of the warm-up for ``duration_s``; the machine's load over it."""
    time.sleep(setup.warmup_s)
    before = machine_load()
    app0, budgetd0 = process_cpu_s(os.getpid()), process_cpu_s(setup.service_pid)
    timings.measuring = True
    time.sleep(setup.duration_s)
    timings.measuring = False
    timings.app_cpu_s = process_cpu_s(os.getpid()) - app0
    timings.budgetd_cpu_s = process_cpu_s(setup.service_pid) - budgetd0
    return load_between(before, machine_load(), setup.duration_s)


def guarded(raw: Any, budgetd: Any, mode: str) -> Any:
    options = {"settle": mode} if mode == "background" else {}
    return guard(raw, budgetd=budgetd, org=ORG, **options)


def sync_phase(setup: Setup, mode: str) -> tuple[Timings, dict[str, Any]]:
    timings = Timings()
    raw = anthropic.Anthropic(
        base_url=setup.upstream,
        api_key="sk-bench",
        max_retries=0,
        http_client=httpx2.Client(transport=TimedTransport()),
    )
    budgetd: TimedBudgetd | None = None
    claude = raw
    if mode != "direct":
        budgetd = TimedBudgetd(
            setup.budgetd, api_key=setup.key, org=ORG, **setup.budgetd_options("sync")
        )
        budgetd.timings = timings
        claude = guarded(raw, budgetd, mode)
    stop = threading.Event()

    def worker(slot: int) -> None:
        n = slot
        stop.wait(setup.start_after(slot))
        while not stop.is_set():
            spent: list[int] = []
            token = _upstream_ns.set(spent)
            t0 = time.perf_counter_ns()
            try:
                claude.messages.create(**call_kwargs(n))
            except Exception as exc:
                timings.errors += 1
                timings.first_error = timings.first_error or repr(exc)
                continue
            finally:
                _upstream_ns.reset(token)
            ns = time.perf_counter_ns() - t0
            timings.add(timings.call, ns)
            timings.add(timings.outside, ns - sum(spent))
            n += setup.concurrency

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(setup.concurrency)]
    for t in threads:
        t.start()
    load = measure(setup, timings)
    stop.set()
    for t in threads:
        t.join()
    claude.close()
    if budgetd is not None:
        budgetd.close()
    return timings, load


async def async_phase(setup: Setup, mode: str) -> tuple[Timings, dict[str, Any]]:
    timings = Timings()
    raw = anthropic.AsyncAnthropic(
        base_url=setup.upstream,
        api_key="sk-bench",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=AsyncTimedTransport()),
    )
    budgetd: AsyncTimedBudgetd | None = None
    claude = raw
    if mode != "direct":
        budgetd = AsyncTimedBudgetd(
            setup.budgetd, api_key=setup.key, org=ORG, **setup.budgetd_options("async")
        )
        budgetd.timings = timings
        claude = guarded(raw, budgetd, mode)
    stop = False

    async def worker(slot: int) -> None:
        n = slot
        await asyncio.sleep(setup.start_after(slot))
        while not stop:
            spent: list[int] = []
            _upstream_ns.set(spent)  # this task's own context
            t0 = time.perf_counter_ns()
            try:
                await claude.messages.create(**call_kwargs(n))
            except Exception as exc:
                timings.errors += 1
                timings.first_error = timings.first_error or repr(exc)
                continue
            ns = time.perf_counter_ns() - t0
            timings.add(timings.call, ns)
            timings.add(timings.outside, ns - sum(spent))
            n += setup.concurrency

    tasks = [asyncio.create_task(worker(s)) for s in range(setup.concurrency)]
    load = await asyncio.to_thread(measure, setup, timings)
    stop = True
    await asyncio.gather(*tasks)
    await claude.close()
    if budgetd is not None:
        await budgetd.aclose()
    return timings, load


# -- the machine's load ------------------------------------------------------------------------

_OURS: list[int] = []
"""Pids of the processes this bench started, and its own."""
_SPINNERS: list[int] = []
"""Pids of the ``--awake`` spinners: their CPU is theirs, not the neighbours'."""


def machine_load() -> dict[str, float]:
    steal, total = steal_ticks()
    ours = sum(process_cpu_s(pid) for pid in _OURS)
    spin = sum(process_cpu_s(pid) for pid in _SPINNERS)
    busy = sum(cpu_busy_s(cpu) for cpu in sorted(os.sched_getaffinity(0)))
    return {
        "steal": steal,
        "total": total,
        "ours": ours,
        "spin": spin,
        "busy": busy,
        "halts": halts(),
        "t": time.monotonic(),
    }


def load_between(a: dict[str, float], b: dict[str, float], seconds: float) -> dict[str, Any]:
    return {
        "steal": round((b["steal"] - a["steal"]) / max(1.0, b["total"] - a["total"]), 4),
        "others_cpus": round(
            max(0.0, (b["busy"] - a["busy"]) - (b["ours"] - a["ours"]) - (b["spin"] - a["spin"]))
            / seconds,
            2,
        ),
        "ours_cpus": round((b["ours"] - a["ours"]) / seconds, 2),
        "spin_cpus": round((b["spin"] - a["spin"]) / seconds, 2),
        "halts_per_s": round((b["halts"] - a["halts"]) / seconds),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def worst(loads: list[dict[str, Any]]) -> dict[str, Any]:
    """The noisiest of a phase's rounds, figure by figure."""
    return {key: max(load[key] for load in loads) for key in loads[0]}


# -- report ------------------------------------------------------------------------------------


def figures(t: Timings, duration_s: float) -> dict[str, Any]:
    def pp(values: list[int]) -> dict[str, float]:
        s = sorted(values)
        return {"p50_ms": round(pct(s, 50), 3), "p99_ms": round(pct(s, 99), 3), "n": len(s)}

    calls = max(1, len(t.call))
    return {
        "calls_per_s": round(len(t.call) / duration_s, 1),
        "errors": t.errors,
        "app_cpu_us_per_call": round(1e6 * t.app_cpu_s / calls),
        "budgetd_cpu_us_per_call": round(1e6 * t.budgetd_cpu_s / calls),
        "call": pp(t.call),
        "outside_upstream": pp(t.outside),
        "reserve": pp(t.reserve),
        "commit": pp(t.commit),
    }


def print_phase(name: str, f: dict[str, Any], load: dict[str, Any]) -> None:
    def two(key: str) -> str:
        v = f[key]
        return f"{v['p50_ms']:7.2f} {v['p99_ms']:7.2f}" if v["n"] else f"{'-':>7} {'-':>7}"

    print(
        f"{name:34} {f['calls_per_s']:6.1f} {two('call')}   {two('outside_upstream')}   "
        f"{two('reserve')}   {two('commit')}   {f['app_cpu_us_per_call']:6} "
        f"{f['budgetd_cpu_us_per_call']:6}   worst round: steal {load['steal']:.1%}, others "
        f"{load['others_cpus']:.2f} CPUs, load {load['loadavg_1m']:.1f}, "
        f"halts {load['halts_per_s']}/s"
        + (f", spin {load['spin_cpus']:.2f} CPUs" if _SPINNERS else "")
        + (f"  ({f['errors']} errors)" if f["errors"] else "")
    )


MODES = ("direct", "inline", "background")
LABELS = {"direct": "direct", "inline": "guarded", "background": "guarded, background commit"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--duration", type=float, default=5.0, help="measured seconds per phase and round"
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds of all phases, taken in turns")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--delay", type=float, default=0.2, help="upstream answer delay (s)")
    p.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        help="spread the upstream delay uniformly over ±this fraction of it (0: every answer "
        "after exactly --delay, so calls that start together stay in step)",
    )
    p.add_argument(
        "--lockstep",
        action="store_true",
        help="start every call of a phase at the same instant (by default they start spread "
        "over one upstream delay)",
    )
    p.add_argument("--clients", choices=("sync", "async", "both"), default="both")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    p.add_argument(
        "--budgetd-http",
        choices=("own", "httpx"),
        default="own",
        help="the budgetd client's connections: its own pool (default) or an httpx client",
    )
    p.add_argument(
        "--realtime",
        action="store_true",
        help="run this bench and everything it starts at SCHED_RR priority 10 (root): on a "
        "shared machine, the neighbours then wait for its processes instead of the reverse",
    )
    p.add_argument(
        "--awake",
        action="store_true",
        help="keep every CPU awake for the run: one SCHED_IDLE busy-spinner per CPU, so no "
        "CPU halts between requests (bench/_machine.py, AwakeCores)",
    )
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.upstream:
        serve_upstream(args.upstream, args.delay, args.jitter)
        return 0
    if args.realtime:
        # Inherited by every process started below. The kernel's RT throttling still leaves
        # the other processes 5 % of each CPU, and this bench's processes are idle most of the
        # time (40 calls/s): it is the machine a quiet run would have, not a fast path.
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(10))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    tmp = Path(tempfile.mkdtemp(prefix="budgetd-clientlat-"))
    procs = Processes(tmp)
    try:
        with AwakeCores() if args.awake else contextlib.nullcontext() as awake:
            if awake is not None:
                _SPINNERS.extend(awake.pids)
            return run(args, tmp, procs, awake)
    except KeyboardInterrupt:
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path, procs: Processes, awake: AwakeCores | None) -> int:
    policies = tmp / "policies"
    policies.mkdir()
    shutil.copy(PRICING, policies / "pricing.yaml")
    (policies / "bench.yaml").write_text(POLICY)
    key = new_key()
    (tmp / "keys.yaml").write_text("keys:\n" + key_line(key, ORG, "app", "bench") + "\n")
    redis_port, service_port, upstream_port = free_port(), free_port(), free_port()
    redis = procs.start(
        "redis",
        ["redis-server", "--bind", HOST, "--port", str(redis_port), "--save", "",
         "--appendonly", "no", "--maxmemory-policy", "noeviction", "--dir", str(tmp)],
    )  # fmt: skip
    wait_until("PONG", lambda: redis_pings(redis_port), redis, procs, "redis")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGETD_")}
    env.update(
        BUDGETD_REDIS_URL=f"redis://{HOST}:{redis_port}/0",
        BUDGETD_POLICY_DIR=str(policies),
        BUDGETD_KEYS_FILE=str(tmp / "keys.yaml"),
        BUDGETD_POLICY_POLL_S="0",
        BUDGETD_SWEEP_INTERVAL_S="0",
    )
    service = procs.start("service", uvicorn_cmd("budgetd.asgi:app", service_port), env=env)
    upstream_args = ["--upstream", str(upstream_port), "--delay", str(args.delay)]
    upstream_args += ["--jitter", str(args.jitter)]
    upstream = procs.start("upstream", [sys.executable, __file__, *upstream_args])
    budgetd_url = f"http://{HOST}:{service_port}"
    wait_until("/readyz", lambda: http_ok(budgetd_url + "/readyz"), service, procs, "service")
    wait_until("listening", lambda: _listening(upstream_port), upstream, procs, "upstream")
    _OURS.extend([os.getpid(), redis.pid, service.pid, upstream.pid])

    setup = Setup(
        upstream=f"http://{HOST}:{upstream_port}",
        budgetd=budgetd_url,
        key=key,
        concurrency=args.concurrency,
        warmup_s=args.warmup,
        duration_s=args.duration,
        service_pid=service.pid,
        http=args.budgetd_http,
        delay_s=args.delay,
        lockstep=args.lockstep,
    )
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    kinds = ("sync", "async") if args.clients == "both" else (args.clients,)
    print(
        f"{args.concurrency} in flight, upstream answers after {args.delay * 1000:.0f} ms"
        + (f" ± {args.jitter:.0%}" if args.jitter else "")
        + f", calls {'started together' if args.lockstep else 'started spread over it'}, "
        f"{args.rounds} rounds × {args.duration:.0f} s measured per phase, in turns; "
        f"budgetd on real Redis, one uvicorn worker; "
        f"budgetd client connections: {args.budgetd_http}"
        + ("; SCHED_RR 10" if args.realtime else "")
    )
    print(
        f"{cpuidle()}; "
        + (awake.describe() if awake else "CPUs may halt when idle")
        + (" (the load average counts the spinners)" if awake else "")
    )
    print(
        f"{'phase':34} {'call/s':>6} {'call p50':>7} {'p99':>7}   {'outside':>7} {'p99':>7}   "
        f"{'reserve':>7} {'p99':>7}   {'commit':>7} {'p99':>7}   (ms)  {'app':>6} "
        f"{'budgetd':>6}   (CPU µs per call)"
    )
    results: dict[str, Any] = {
        "concurrency": args.concurrency,
        "delay_s": args.delay,
        "awake": args.awake,
        "cpuidle": cpuidle(),
    }
    failed = False
    for kind in kinds:
        # Rounds of (direct, guarded, background): each phase's samples are taken in turns, so
        # a neighbour's burst lands on every phase alike rather than on whichever ran then.
        merged = {mode: Timings() for mode in modes}
        loads: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode in modes:
                t, load = (
                    sync_phase(setup, mode)
                    if kind == "sync"
                    else uvloop.run(async_phase(setup, mode))
                )
                merged[mode].merge(t)
                loads[mode].append(load)
        for mode in modes:
            t = merged[mode]
            f = figures(t, args.duration * args.rounds)
            f["load"] = load = worst(loads[mode])
            results[f"{kind}/{mode}"] = f
            print_phase(f"{kind} {LABELS[mode]}", f, load)
            if t.errors:
                failed = True
                print(f"  first error: {t.first_error}", file=sys.stderr)
        base = results.get(f"{kind}/direct")
        for mode in modes:
            if mode == "direct" or base is None:
                continue
            g = results[f"{kind}/{mode}"]
            added = {
                f"{what}_{q}": round(g[what][q] - base[what][q], 3)
                for what in ("call", "outside_upstream")
                for q in ("p50_ms", "p99_ms")
            }
            added["app_cpu_us_per_call"] = g["app_cpu_us_per_call"] - base["app_cpu_us_per_call"]
            g["added"] = added
            # Two estimates of the same thing: whole calls compared across phases (the issue's
            # definition; at these call counts a p99 is the 4th-worst call of the phase), and
            # each call's own time outside the upstream request. The goal holds if both do.
            ok = all(
                added[f"{what}_p50_ms"] <= GOAL_P50_MS and added[f"{what}_p99_ms"] <= GOAL_P99_MS
                for what in ("call", "outside_upstream")
            )
            print(
                f"  {kind} {LABELS[mode]}: added p50 / p99 {added['call_p50_ms']:+.2f} / "
                f"{added['call_p99_ms']:+.2f} ms (whole calls), "
                f"{added['outside_upstream_p50_ms']:+.2f} / "
                f"{added['outside_upstream_p99_ms']:+.2f} ms (outside upstream); goal ≤ "
                f"{GOAL_P50_MS:g} / ≤ {GOAL_P99_MS:g}: {'met' if ok else 'MISSED'}; app CPU "
                f"{added['app_cpu_us_per_call']:+} µs per call"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if failed else 0


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
