"""Benchmark: reserve→commit pairs through the real HTTP service on a real Redis, against a no-op
echo app driven identically. Bounded: it stops by itself and cleans up everything it started.

    /work/venv/bin/python bench/reserve_commit.py [--concurrency 8] [--duration 10] [--warmup 2]

What it starts (all on 127.0.0.1, free ports, in a temp dir removed on exit):
  * its own ``redis-server`` (no persistence, ``maxmemory-policy noeviction``);
  * the service: ``uvicorn budgetd.asgi:app`` (uvloop, httptools, one worker, no access log),
    with a bench policy (org ``bench``, budgets far above what a run can spend), the shipped
    price table, an API key, and no policy polling and no sweep;
  * three echo apps under the same uvicorn settings, with the same two routes and the same
    bodies decoded into the same Structs: ``bench/raw_echo.py`` (bare ASGI, nothing behind it:
    the floor of serving HTTP in this stack), ``bench/echo_app.py`` (Litestar), and
    ``bench/redis_echo.py`` (bare ASGI plus one Redis script call per request that only
    returns: the floor of any design with one atomic script per reserve and per commit).

With two or more CPUs the servers are pinned to CPU 0 (the "one worker core"); this process
(the load generator) and Redis share CPU 1. Each target is measured alone, the others idle.

Load: ``--concurrency`` slots, each one HTTP/1.1 keep-alive connection doing reserve, then commit
of that reservation, then the next pair. The echo app gets exactly the same byte stream. The
default client is a small asyncio protocol with pre-built request templates; ``--client httpx``
drives the same load through ``httpx.AsyncClient`` (much slower per request on the client side:
see docs/performance.md).

Reported against each echo: the service's CPU per request as a multiple of the echo's (issue 13's
goal: ≤ 2.5× the raw echo), and ratio = (pairs/s × 2) / echo requests/s. Next to every figure,
the neighbours' share of the machine in that window: CPU steal (``/proc/stat``), other
processes' busy time on the server's CPU, and the load average, so that noisy runs can be told
apart from slow code.

``--awake``: one ``SCHED_IDLE`` busy-spinner per CPU for the run (``bench/_machine.py``,
``AwakeCores``), so no CPU halts between requests; the spinners' CPU is not counted as the
neighbours' ("halts/s" says whether the CPUs halted; the load average counts the spinners).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from _machine import AwakeCores, cpuidle, halts, process_cpu, steal_ticks
from budgetd.auth import key_line, new_key

try:
    import uvloop
except ImportError:  # the bench still runs, on a slower client loop
    uvloop = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
PRICING = ROOT / "policies" / "pricing.yaml"
HOST = "127.0.0.1"
ORG = "bench"
MODEL = "claude-sonnet-5-5"  # sonnet-4-5 retired 2026-11-30 (pricing.yaml)
ECHOES = {
    "raw_echo": "raw_echo:app",
    "litestar_echo": "echo_app:app",
    "redis_echo": "redis_echo:app",
}
"""The baselines: name (its ``--echo`` choice before ``_echo``) → uvicorn app in ``bench/``."""
ECHO_CHOICES = {
    "all": tuple(ECHOES),
    "both": ("raw_echo", "litestar_echo"),
    **{name.removesuffix("_echo"): (name,) for name in ECHOES},
    "none": (),
}

POLICY = f"""\
# Bench policy: every kind of limit applies to every request, none can deny during a run.
org: {ORG}
timezone: America/New_York
defaults:
  hold_ttl_s: 300
budgets:
  - {{name: org-month, scope: org, limit_usd: 100000000, period: month}}
  - {{name: feature-day, scope: feature, limit_usd: 10000000, period: day}}
  - {{name: user-day, scope: user, limit_usd: 1000000, period: day}}
rate_limits:
  - name: org-rate
    scope: org
    requests_per_minute: 1000000000
    input_tokens_per_minute: 100000000000
    output_tokens_per_minute: 100000000000
  - name: user-rate
    scope: user
    requests_per_minute: 10000000
    input_tokens_per_minute: 100000000000
    output_tokens_per_minute: 100000000000
"""

# -- machinery: ports, processes, cleanup -----------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    if cpu is None:
        return cmd
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(cpu), *cmd] if taskset else cmd


class Processes:
    """Every subprocess this bench starts; all are stopped by ``stop_all`` (SIGTERM, then KILL)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None, cpu: int | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.logdir / f"{name}.log").open("wb")
        # Own session: a Ctrl-C in the terminal reaches only this process, which then stops the
        # children in order (servers before Redis) instead of all of them racing.
        proc = subprocess.Popen(
            pinned(cmd, cpu),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=self.logdir,
        )
        log.close()
        self.running.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logdir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self) -> None:
        for _, proc in reversed(self.running):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + 10
        for _, proc in reversed(self.running):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self.running.clear()


def wait_until(
    what: str,
    check: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    procs: Processes,
    name: str,
    timeout_s: float = 30.0,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"{name} exited ({proc.returncode}) before {what}:\n" + procs.log_tail(name)
            )
        if check():
            return
        time.sleep(0.05)
    raise SystemExit(f"{name}: no {what} after {timeout_s:.0f}s:\n" + procs.log_tail(name))


def redis_pings(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def uvicorn_cmd(app: str, port: int, app_dir: Path | None = None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        HOST,
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--workers",
        "1",
        "--log-level",
        "warning",
    ]
    if app_dir is not None:
        cmd += ["--app-dir", str(app_dir)]
    return cmd


# -- load: requests, clients, slots ------------------------------------------------------------


class Requests:
    """Request bytes for pair ``n`` of slot ``s``: unique reservation id, users and features
    spread over ``users``/``features`` entities, the body sizes of a real Messages API call."""

    def __init__(self, port: int, key: str, users: int, features: int) -> None:
        self.port, self.key, self.users, self.features = port, key, users, features
        self._head = (
            f"Host: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\n"
        )
        self.commit_body = json.dumps(
            {
                "model": MODEL,
                "usage": {
                    "input_tokens": 1180,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "cache_creation": {
                        "ephemeral_5m_input_tokens": 0,
                        "ephemeral_1h_input_tokens": 0,
                    },
                    "output_tokens": 412,
                    "service_tier": "standard",
                },
            },
            separators=(",", ":"),
        ).encode()

    def reserve_body(self, rid: str, n: int) -> bytes:
        return json.dumps(
            {
                "org": ORG,
                "user": f"user-{n % self.users}",
                "feature": f"feature-{n % self.features}",
                "model": MODEL,
                "input_tokens": 1200,
                "max_tokens": 1024,
                "reservation_id": rid,
            },
            separators=(",", ":"),
        ).encode()

    def raw(self, path: str, body: bytes) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\n{self._head}Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def pair(self, slot: int, n: int) -> tuple[str, bytes, str, bytes]:
        rid = f"b{slot}-{n}"
        return (
            "/v1/reservations",
            self.reserve_body(rid, n * 8 + slot),
            f"/v1/reservations/{rid}/commit?org={ORG}",
            self.commit_body,
        )


class RawConnection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection, one request at a time, Content-Length framing (what
    uvicorn sends for these responses). Just enough HTTP to not be the bottleneck."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1
        self.body_at = 0
        self.status = 0
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionError("server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            self.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                raise RuntimeError("response without Content-Length: " + head.decode())
            line_end = head.find(b"\r\n", at + 2)
            self.body_at = end + 4
            self.need = self.body_at + int(head[at + 17 : line_end if line_end > 0 else None])
        if len(self.buf) >= self.need and self.waiter is not None:
            body = bytes(self.buf[self.body_at : self.need])
            del self.buf[: self.need]
            self.need = -1
            self.waiter.set_result((self.status, body))

    async def send(self, path: str, body: bytes, requests: Requests) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(requests.raw(path, body))
        return await self.waiter


Send = Callable[[str, bytes], Awaitable[tuple[int, bytes]]]


async def raw_sender(port: int, requests: Requests) -> tuple[Send, Callable[[], Awaitable[None]]]:
    loop = asyncio.get_running_loop()
    transport, conn = await loop.create_connection(RawConnection, HOST, port)

    async def send(path: str, body: bytes) -> tuple[int, bytes]:
        return await conn.send(path, body, requests)

    async def close() -> None:
        transport.close()

    return send, close


async def httpx_sender(port: int, requests: Requests) -> tuple[Send, Callable[[], Awaitable[None]]]:
    import httpx  # noqa: PLC0415  (only this mode needs it; a dev dependency)

    client = httpx.AsyncClient(
        base_url=f"http://{HOST}:{port}",
        http2=False,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        headers={"content-type": "application/json", "authorization": f"Bearer {requests.key}"},
        timeout=10.0,
    )

    async def send(path: str, body: bytes) -> tuple[int, bytes]:
        resp = await client.post(path, content=body)
        return resp.status_code, resp.content

    return send, client.aclose


@dataclass
class Phase:
    """What one measured run collected (latencies in ns; only pairs finished inside the window)."""

    name: str
    window_s: float = 0.0
    pairs: int = 0
    pair_ns: list[int] = field(default_factory=list)
    reserve_ns: list[int] = field(default_factory=list)
    commit_ns: list[int] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    server_cpu_s: float = 0.0
    """CPU time (user + system) the server process used inside the window."""
    cpu_busy_s: float = 0.0
    """Busy time of the server's CPU inside the window, whoever used it (when pinned)."""
    client_cpu_busy_s: float = 0.0
    """Busy time of the load generator's CPU inside the window (it shares it with Redis)."""
    redis_cpu_s: float = 0.0
    """CPU time of redis-server inside the window (the service's phase only)."""
    client_cpu_s: float = 0.0
    """CPU time this load generator used inside the window."""
    steal: float = 0.0
    """Share of the machine's CPU time stolen by the hypervisor inside the window."""
    loadavg: tuple[float, float] = (0.0, 0.0)
    """1-minute load average at the start and at the end of the window."""
    spin_s: tuple[float, float] = (0.0, 0.0)
    """CPU time of the ``--awake`` spinners on the server's and the load generator's CPUs."""
    halts_per_s: float = 0.0
    """Entries of all CPUs into a halting idle state, per second of the window."""

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.window_s if self.window_s else 0.0


_SPINNER_ON: dict[int, int] = {}
"""CPU → pid of its ``--awake`` spinner."""


def spin_s(cpu: int | None) -> float:
    """CPU time of the spinner on ``cpu`` (0 without one), in seconds."""
    pid = _SPINNER_ON.get(cpu) if cpu is not None else None
    return process_cpu_s(pid) if pid else 0.0


def process_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    return sum(process_cpu(pid))


def cpu_busy_s(cpu: int | None) -> float:
    """Non-idle time of one CPU since boot (0 when not pinned), in seconds."""
    if cpu is None:
        return 0.0
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            idle = v[3] + v[4]  # idle + iowait
            return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    return 0.0


async def drive(
    name: str,
    port: int,
    requests: Requests,
    *,
    client: str,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    expect: tuple[int, int],
    server_pid: int,
    server_cpu: int | None,
    client_cpu: int | None,
    redis_pid: int | None = None,
) -> Phase:
    phase = Phase(name)
    factory = raw_sender if client == "raw" else httpx_sender
    senders = [await factory(port, requests) for _ in range(concurrency)]
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    clock = time.perf_counter_ns

    async def slot(index: int, send: Send) -> None:
        n = 0
        while loop.time() < stop_at:
            r_path, r_body, c_path, c_body = requests.pair(index, n)
            n += 1
            t0 = clock()
            s1, b1 = await send(r_path, r_body)
            t1 = clock()
            s2, b2 = await send(c_path, c_body)
            t2 = clock()
            if (s1, s2) != expect:
                phase.errors += 1
                if not phase.first_error:
                    phase.first_error = f"{s1} {b1[:300]!r} / {s2} {b2[:300]!r}"
                continue
            now = loop.time()
            if measure_from <= now < stop_at:
                phase.pairs += 1
                phase.pair_ns.append(t2 - t0)
                phase.reserve_ns.append(t1 - t0)
                phase.commit_ns.append(t2 - t1)

    async def sample_cpu() -> None:
        await asyncio.sleep(max(0.0, measure_from - loop.time()))
        proc0, busy0 = process_cpu_s(server_pid), cpu_busy_s(server_cpu)
        client0, client_busy0 = process_cpu_s(os.getpid()), cpu_busy_s(client_cpu)
        steal0, total0 = steal_ticks()
        load0 = os.getloadavg()[0]
        redis0 = process_cpu_s(redis_pid) if redis_pid else 0.0
        spin0, halts0 = (spin_s(server_cpu), spin_s(client_cpu)), halts()
        await asyncio.sleep(max(0.0, stop_at - loop.time()))
        phase.spin_s = (spin_s(server_cpu) - spin0[0], spin_s(client_cpu) - spin0[1])
        phase.halts_per_s = (halts() - halts0) / duration_s
        phase.redis_cpu_s = (process_cpu_s(redis_pid) - redis0) if redis_pid else 0.0
        phase.client_cpu_s = process_cpu_s(os.getpid()) - client0
        phase.server_cpu_s = process_cpu_s(server_pid) - proc0
        phase.cpu_busy_s = cpu_busy_s(server_cpu) - busy0
        phase.client_cpu_busy_s = cpu_busy_s(client_cpu) - client_busy0
        steal1, total1 = steal_ticks()
        phase.steal = (steal1 - steal0) / max(1, total1 - total0)
        phase.loadavg = (load0, os.getloadavg()[0])

    try:
        await asyncio.gather(sample_cpu(), *(slot(i, s) for i, (s, _) in enumerate(senders)))
    finally:
        for _, close in senders:
            await close()
    phase.window_s = duration_s
    return phase


# -- reporting ---------------------------------------------------------------------------------


def pct(sorted_ns: list[int], p: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    if not sorted_ns:
        return float("nan")
    rank = max(1, min(len(sorted_ns), int(-(-p * len(sorted_ns) // 100))))
    return sorted_ns[rank - 1] / 1e6


def latencies(values: list[int]) -> dict[str, float]:
    s = sorted(values)
    return {
        "p50_ms": pct(s, 50),
        "p99_ms": pct(s, 99),
        "p99.9_ms": pct(s, 99.9),
        "max_ms": s[-1] / 1e6 if s else float("nan"),
    }


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mhz = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                mhz = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("litestar", "uvicorn", "uvloop", "httptools", "redis", "hiredis", "msgspec"):
        with contextlib.suppress(PackageNotFoundError):
            versions[dist] = version(dist)
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()[2:3]
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "cpu_mhz": mhz,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "redis": redis_version[0].removeprefix("v=") if redis_version else "?",
        "packages": versions,
    }


def cpu_figures(phase: Phase) -> dict[str, Any]:
    requests = 2 * phase.pairs
    return {
        "server_cpu_util": round(phase.server_cpu_s / phase.window_s, 3),
        "cpu_us_per_request": round(1e6 * phase.server_cpu_s / requests, 1) if requests else None,
        "client_cpu_util": round(phase.client_cpu_s / phase.window_s, 3),
        "neighbours": {
            "other_load_on_server_cpu": round(
                max(0.0, phase.cpu_busy_s - phase.server_cpu_s - phase.spin_s[0]) / phase.window_s,
                3,
            ),
            "other_load_on_client_cpu": round(
                max(0.0, phase.client_cpu_busy_s - phase.client_cpu_s - phase.spin_s[1])
                / phase.window_s,
                3,
            ),
            "spinners_on_server_cpu": round(phase.spin_s[0] / phase.window_s, 3),
            "halts_per_s": round(phase.halts_per_s),
            "steal": round(phase.steal, 4),
            "loadavg_1m": [round(x, 2) for x in phase.loadavg],
        },
    }


def echo_figures(echo: Phase, service: Phase, s_us: float | None) -> dict[str, Any]:
    """One echo's figures and the service's against it."""
    rps = 2 * echo.pairs_per_s
    figures = cpu_figures(echo)
    e_us = figures["cpu_us_per_request"]
    return {
        "requests_per_s": round(rps, 1),
        "errors": echo.errors,
        "request": latencies(echo.reserve_ns + echo.commit_ns),
        "pair": latencies(echo.pair_ns),
        **figures,
        "ratio": round(2 * service.pairs_per_s / rps, 3) if rps else None,
        "service_cpu_multiple": round(s_us / e_us, 2) if s_us and e_us else None,
    }


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    service: Phase,
    echoes: dict[str, Phase],
    pinning: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "machine": info,
        "pinning": pinning,
        "cpuidle": cpuidle()
        + (
            "; awake cores: a SCHED_IDLE spinner on every CPU (the load average counts them)"
            if _SPINNER_ON
            else ""
        ),
        "client": args.client,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "service": {
            "pairs": service.pairs,
            "pairs_per_s": round(service.pairs_per_s, 1),
            "requests_per_s": round(2 * service.pairs_per_s, 1),
            "errors": service.errors,
            "pair": latencies(service.pair_ns),
            "reserve": latencies(service.reserve_ns),
            "commit": latencies(service.commit_ns),
            **cpu_figures(service),
            "redis_cpu_us_per_pair": (
                round(1e6 * service.redis_cpu_s / service.pairs, 1) if service.pairs else None
            ),
        },
    }
    s_us = out["service"]["cpu_us_per_request"]
    for name, echo in echoes.items():
        out[name] = echo_figures(echo, service, s_us)
    return out


def print_report(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"\nmachine: {m['nproc']} CPU ({m['cpu']}, {m['cpu_mhz']} MHz), Linux {m['kernel']}, "
        f"Python {m['python']}, redis-server {m['redis']}"
    )
    print("packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()))
    print(f"pinning: {r['pinning']}")
    print(r["cpuidle"])
    print(
        f"load: {r['concurrency']} in flight, {r['client']} client, warmup {r['warmup_s']} s, "
        f"measured {r['duration_s']} s"
    )
    s = r["service"]
    print(
        f"\nservice  {s['pairs_per_s']:>9,.0f} pairs/s  ({s['requests_per_s']:,.0f} requests/s, "
        f"{s['pairs']:,} pairs, {s['errors']} errors)"
    )
    print(f"  {'':8} {'p50':>8} {'p99':>8} {'p99.9':>8} {'max':>8}   (ms)")
    for name in ("pair", "reserve", "commit"):
        lat = s[name]
        print(
            f"  {name:8} {lat['p50_ms']:8.2f} {lat['p99_ms']:8.2f} {lat['p99.9_ms']:8.2f} "
            f"{lat['max_ms']:8.2f}"
        )
    print_cpu(s)
    if s["cpu_us_per_request"] and s["redis_cpu_us_per_pair"]:
        # docs/performance.md's paper model: a service core carries 1e6 / (2 s) pairs/s and a
        # Redis core 1e6 / r, s and r the CPU a request and a pair cost them here.
        print(
            f"  Redis CPU {s['redis_cpu_us_per_pair']} µs per pair; paper model: one service "
            f"core carries {1e6 / (2 * s['cpu_us_per_request']):,.0f} pairs/s, one Redis "
            f"{1e6 / s['redis_cpu_us_per_pair']:,.0f}"
        )
    for name in ECHOES:
        if name not in r:
            continue
        e = r[name]
        lat = e["request"]
        print(
            f"{name:11} {e['requests_per_s']:>7,.0f} requests/s ({e['errors']} errors)  "
            f"request p50 {lat['p50_ms']:.2f} p99 {lat['p99_ms']:.2f} "
            f"p99.9 {lat['p99.9_ms']:.2f} ms"
        )
        print_cpu(e)
        print(
            f"  service CPU per request = {e['service_cpu_multiple']}× this echo's; "
            f"ratio {e['ratio']:.3f} (= service pairs/s × 2 / echo requests/s)"
        )
    calls_p99 = max(s["reserve"]["p99_ms"], s["commit"]["p99_ms"])
    targets = [("per-call p99 ≤ 2 ms", calls_p99 <= 2.0)]
    if "raw_echo" in r and r["raw_echo"]["service_cpu_multiple"] is not None:
        targets.append(
            ("service CPU ≤ 2.5× raw echo", r["raw_echo"]["service_cpu_multiple"] <= 2.5)
        )
    print(
        "targets (issue 13): " + ", ".join(f"{t} {'met' if ok else 'MISSED'}" for t, ok in targets)
    )


def print_cpu(f: dict[str, Any]) -> None:
    n = f["neighbours"]
    print(
        f"  server CPU {f['server_cpu_util']:.0%} busy, {f['cpu_us_per_request']} µs CPU per "
        f"request; load generator CPU {f['client_cpu_util']:.0%}\n"
        f"  neighbours: other processes on the server's CPU {n['other_load_on_server_cpu']:.0%}, "
        f"on the load generator's {n['other_load_on_client_cpu']:.0%} (Redis included), "
        f"steal {n['steal']:.1%}, load average "
        f"{n['loadavg_1m'][0]:.1f} → {n['loadavg_1m'][1]:.1f}; halts {n['halts_per_s']}/s"
        + (
            f", spinner on the server's CPU {n['spinners_on_server_cpu']:.0%}"
            if _SPINNER_ON
            else ""
        )
    )


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--concurrency", type=int, default=8, help="pairs in flight (connections)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per target")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw")
    p.add_argument("--users", type=int, default=1000, help="distinct users (one budget each)")
    p.add_argument("--features", type=int, default=20, help="distinct features")
    p.add_argument(
        "--echo",
        choices=tuple(ECHO_CHOICES),
        default="all",
        help="which echo baselines to measure: raw ASGI, Litestar, raw ASGI + one Redis script "
        "call per request (all: the three; both: raw and Litestar)",
    )
    p.add_argument("--no-echo", action="store_true", help="the same as --echo none")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument(
        "--py-spy",
        metavar="OUT",
        help="profile the service with `py-spy record` during its measured window "
        "(OUT.svg flame graph, OUT.txt collapsed stacks)",
    )
    p.add_argument(
        "--awake",
        action="store_true",
        help="keep every CPU awake: one SCHED_IDLE busy-spinner per CPU for the run",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--service-app",
        default="budgetd.asgi:app",
        metavar="MODULE:ATTR",
        help="ASGI app to measure instead of the service (A/B a candidate change "
        "kept outside the tree)",
    )
    p.add_argument("--service-app-dir", type=Path, help="directory to import --service-app from")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server not found on PATH")
    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) >= 2
    server_cpu, client_cpu = (cpus[0], cpus[1]) if pin else (None, None)
    pinning = (
        f"servers on CPU {server_cpu}; load generator and redis-server on CPU {client_cpu}"
        if pin
        else "none"
    )

    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    tmp = Path(tempfile.mkdtemp(prefix="budgetd-bench-"))
    procs = Processes(tmp)
    try:
        with AwakeCores() if args.awake else contextlib.nullcontext() as awake:
            if awake is not None:
                _SPINNER_ON.update(zip(awake.cpus, awake.pids, strict=True))
            return run(args, tmp, procs, server_cpu, client_cpu, pinning)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def bench_redis(
    procs: Processes, home: Path, name: str, cpu: int | None
) -> tuple[subprocess.Popen[bytes], dict[str, str], str]:
    """In ``home``: the bench policy and the price table, an API key, and a ``redis-server``
    (loopback, free port, no persistence, ``noeviction``) started as ``name`` on ``cpu``.
    Returns the server, the service's environment for them (no policy polling, no sweep) and
    the key."""
    policies = home / "policies"
    policies.mkdir(parents=True)
    shutil.copy(PRICING, policies / "pricing.yaml")
    (policies / "bench.yaml").write_text(POLICY)
    key = new_key()
    (home / "keys.yaml").write_text("keys:\n" + key_line(key, ORG, "app", "bench") + "\n")
    redis_port = free_port()
    redis = procs.start(
        name,
        [
            "redis-server",
            "--bind",
            HOST,
            "--port",
            str(redis_port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
            "--protected-mode",
            "yes",
            "--dir",
            str(home),
        ],
        cpu=cpu,
    )
    wait_until("PONG", lambda: redis_pings(redis_port), redis, procs, name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGETD_")}
    env.update(
        BUDGETD_REDIS_URL=f"redis://{HOST}:{redis_port}/0",
        BUDGETD_POLICY_DIR=str(policies),
        BUDGETD_KEYS_FILE=str(home / "keys.yaml"),
        BUDGETD_POLICY_POLL_S="0",
        BUDGETD_SWEEP_INTERVAL_S="0",
    )
    return redis, env, key


def run(
    args: argparse.Namespace,
    tmp: Path,
    procs: Processes,
    server_cpu: int | None,
    client_cpu: int | None,
    pinning: str,
) -> int:
    redis, env, key = bench_redis(procs, tmp, "redis", client_cpu)
    service_port = free_port()
    service = procs.start(
        "service",
        uvicorn_cmd(args.service_app, service_port, args.service_app_dir),
        env=env,
        cpu=server_cpu,
    )
    echo_env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGETD_")}
    echo_env["REDIS_ECHO_PORT"] = env["BUDGETD_REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
    which = ECHO_CHOICES["none" if args.no_echo else args.echo]
    echoes: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    for name, module in ECHOES.items():
        if name in which:
            port = free_port()
            proc = procs.start(
                name, uvicorn_cmd(module, port, BENCH_DIR), env=echo_env, cpu=server_cpu
            )
            echoes[name] = (proc, port)
    wait_until(
        "/readyz",
        lambda: http_ok(f"http://{HOST}:{service_port}/readyz"),
        service,
        procs,
        "service",
    )
    for name, (proc, port) in echoes.items():
        # Any answer from uvicorn means it is up; the echo apps have no GET routes.
        wait_until("listening", lambda p=port: _listening(p), proc, procs, name)

    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    info = machine()
    print(
        f"bench: {args.concurrency} in flight, {args.client} client, pinning: {pinning}", flush=True
    )
    common = {
        "client": args.client,
        "concurrency": args.concurrency,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "client_cpu": client_cpu,
    }
    echo_phases: dict[str, Phase] = {}
    for name, (proc, port) in echoes.items():
        echo_phases[name] = phase = asyncio.run(
            drive(
                name,
                port,
                Requests(port, key, args.users, args.features),
                expect=(201, 200),
                server_pid=proc.pid,
                server_cpu=server_cpu,
                **common,
            )
        )
        print(f"  {name} done: {2 * phase.pairs_per_s:,.0f} requests/s", flush=True)
    with profiling(args.py_spy, service.pid, args.warmup, args.duration, procs, client_cpu):
        service_phase = asyncio.run(
            drive(
                "service",
                service_port,
                Requests(service_port, key, args.users, args.features),
                expect=(201, 200),
                server_pid=service.pid,
                server_cpu=server_cpu,
                redis_pid=redis.pid,
                **common,
            )
        )
    for phase in (*echo_phases.values(), service_phase):
        if phase.errors:
            print(
                f"{phase.name}: {phase.errors} failed pairs; first: {phase.first_error}",
                file=sys.stderr,
            )
            tail = procs.log_tail(phase.name)
            if tail:
                print(f"--- {phase.name} log (last lines) ---\n{tail}", file=sys.stderr)
    result = report(args, info, service_phase, echo_phases, pinning)
    print_report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if any(p.errors for p in (service_phase, *echo_phases.values())) else 0


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def profiling(
    out: str | None, pid: int, warmup_s: float, duration_s: float, procs: Processes, cpu: int | None
) -> Iterator[None]:
    """``py-spy record`` against the service for the measured window, as collapsed stacks
    (``OUT.txt``, one line per stack with its sample count). It samples from outside, on the
    load generator's CPU, at 100 Hz and without pausing the server (``--nonblocking``)."""
    if not out:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    target = Path(out).resolve().with_suffix(".txt")
    # taskset execs uvicorn, so the service's pid is the Python process itself.
    script = (
        f"sleep {warmup_s}; exec {spy} record --pid {pid} --rate 100 --nonblocking "
        f"--duration {max(1, round(duration_s))} --format raw -o {target}"
    )
    spy_proc = procs.start("py-spy", ["sh", "-c", script], cpu=cpu)
    yield
    with contextlib.suppress(subprocess.TimeoutExpired):
        spy_proc.wait(timeout=15)
    print(
        f"py-spy: {target}"
        if target.exists()
        else "py-spy: no profile written:\n" + procs.log_tail("py-spy"),
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
