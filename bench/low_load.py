"""Benchmark: what one request costs the service at LOW load (issue 13, "what the app feels").

    chrt -r 10 python bench/low_load.py [--rate 40] [--duration 5] [--rounds 3]
        [--variant base=/path/to/copy --variant new=/path/to/other] [--idle 3]

A paced probe, not a saturating one: one reserve → commit pair at a time, started every
1/``--rate`` s (``--rate 0``: back to back, the next pair as soon as the last one answered),
against the real HTTP service (``uvicorn budgetd.asgi:app``, uvloop, httptools, one worker)
on its own real ``redis-server``, with the bench policy and settings of ``bench/reserve_commit.py``
(policy polling and sweep off, every other job at its default). Servers on CPU 0, this process
and Redis on CPU 1 (when there are two CPUs), as in ``reserve_commit.py``.

Each ``--variant NAME=DIR`` is a copy of the service tree (``git archive``) imported through
``--app-dir``; without one, the service of this checkout. Every variant gets its own service
and Redis, started once; the rounds take the variants in turns (the order reversed every other
round), so that a neighbour's burst lands on each alike.

Per variant and round: the service process's CPU (``/proc/<pid>/stat``, user + system) per
request over the paced window, the same over an ``--idle`` window with no requests (the
background: jobs, timers), the per-request figure net of that background, and the round-trip
p50/p99 of reserve and commit as this client sees them. Printed with the load average, the
CPU steal of each window, the other processes' CPU (busy time of every CPU minus this bench's
processes and spinners) and the CPUs' halts per second (entries into a halting idle state).

``--awake``: one ``SCHED_IDLE`` busy-spinner per CPU for the run (``bench/_machine.py``,
``AwakeCores``), so no CPU halts between requests; their CPU is reported apart ("spin"), and
the load average counts them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _machine import AwakeCores, cpuidle, halts, load_average, process_cpu, steal_ticks
from reserve_commit import (
    BENCH_DIR,
    HOST,
    Processes,
    Requests,
    _listening,
    bench_redis,
    cpu_busy_s,
    free_port,
    http_ok,
    pct,
    raw_sender,
    uvicorn_cmd,
    wait_until,
)


def process_runtime_s(pid: int) -> float:
    """CPU time of ``pid``, all its threads, in seconds, to the nanosecond: the scheduler's
    ``sum_exec_runtime`` (``/proc/<pid>/task/*/schedstat``). ``/proc/<pid>/stat`` counts in
    clock ticks (10 ms), too coarse for a service idle 95 % of the time."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


try:
    import uvloop
except ImportError:
    uvloop = None  # type: ignore[assignment]


_OURS: list[int] = []
"""This process and every process it started (all variants' services and Redis servers)."""
_SPINNERS: list[int] = []
"""The ``--awake`` spinners' pids: their CPU is reported apart, not as the neighbours'."""


def cpu_split() -> tuple[float, float, float]:
    """(busy time of every CPU, this bench's processes' CPU, the spinners' CPU), in seconds."""
    busy = sum(cpu_busy_s(cpu) for cpu in range(os.cpu_count() or 1))
    return (
        busy,
        sum(sum(process_cpu(pid)) for pid in _OURS),
        sum(sum(process_cpu(pid)) for pid in _SPINNERS),
    )


@dataclass
class Target:
    name: str
    pid: int
    port: int
    requests: Requests


@dataclass
class Window:
    """One measured window of one variant."""

    variant: str
    requests: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    """This probe's own CPU in the window: what the answers cost the caller to receive."""
    user_s: float = 0.0
    sys_s: float = 0.0
    """User and kernel time in clock ticks (``/proc/<pid>/stat``): their ratio only."""
    idle_cpu_s: float = 0.0
    idle_s: float = 0.0
    reserve_ns: list[int] = field(default_factory=list)
    commit_ns: list[int] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    steal: float = 0.0
    load: str = ""
    others_cpus: float = 0.0
    """Other processes' CPU over the window, in CPUs (this bench's and the spinners' apart)."""
    spin_cpus: float = 0.0
    halts_per_s: float = 0.0

    @property
    def us_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests else float("nan")

    @property
    def background_us_per_s(self) -> float:
        return self.idle_cpu_s / self.idle_s * 1e6 if self.idle_s else 0.0

    @property
    def net_us_per_request(self) -> float:
        if not self.requests:
            return float("nan")
        return (self.cpu_s - self.background_us_per_s * self.seconds / 1e6) / self.requests * 1e6


def start_service(
    procs: Processes,
    tmp: Path,
    name: str,
    app_dir: Path | None,
    server_cpu: int | None,
    client_cpu: int | None,
    extra_env: dict[str, str],
) -> tuple[int, int, str]:
    """Redis and the service for one variant: (service pid, service port, API key)."""
    redis, env, key = bench_redis(procs, tmp / name, f"redis-{name}", client_cpu)
    port = free_port()
    env.update(extra_env)
    if app_dir is not None:
        env["PYTHONPATH"] = str(app_dir)
    service = procs.start(
        f"service-{name}", uvicorn_cmd("budgetd.asgi:app", port, app_dir), env=env, cpu=server_cpu
    )
    wait_until(
        "/readyz",
        lambda: http_ok(f"http://{HOST}:{port}/readyz"),
        service,
        procs,
        f"service-{name}",
    )
    print(f"{name}: service pid {service.pid}, redis pid {redis.pid}", flush=True)
    return service.pid, port, key


async def paced(target: Target, rate: float, seconds: float, window: Window, first: int) -> int:
    """Pairs one at a time for ``seconds``, one every 1/``rate`` s (0: back to back). Returns
    the next pair number."""
    send, close = await raw_sender(target.port, target.requests)
    loop = asyncio.get_running_loop()
    n = first
    try:
        for _ in range(20):  # warm the connection and the service's caches, not measured
            n = await one_pair(send, target.requests, n, None)
        (user0, sys0), t0 = process_cpu(target.pid), time.perf_counter()
        cpu0, client0 = process_runtime_s(target.pid), time.process_time()
        steal0, load0 = steal_ticks(), load_average().split()[0]
        split0, halts0 = cpu_split(), halts()
        end = loop.time() + seconds
        next_at = loop.time()
        while loop.time() < end:
            if rate > 0:
                next_at += 1 / rate
            n = await one_pair(send, target.requests, n, window)
            if rate > 0 and (delay := next_at - loop.time()) > 0:
                await asyncio.sleep(delay)
        window.seconds += time.perf_counter() - t0
        window.cpu_s += process_runtime_s(target.pid) - cpu0
        window.client_cpu_s += time.process_time() - client0
        user1, sys1 = process_cpu(target.pid)
        window.user_s += user1 - user0
        window.sys_s += sys1 - sys0
        steal1 = steal_ticks()
        total = steal1[1] - steal0[1]
        window.steal = (steal1[0] - steal0[0]) / total if total else 0.0
        window.load = f"{load0}–{load_average().split()[0]}"
        busy, ours, spin = (b - a for a, b in zip(split0, cpu_split(), strict=True))
        elapsed = time.perf_counter() - t0
        window.others_cpus = max(0.0, busy - ours - spin) / elapsed
        window.spin_cpus = spin / elapsed
        window.halts_per_s = (halts() - halts0) / elapsed
    finally:
        await close()
    return n


async def one_pair(send: object, requests: Requests, n: int, window: Window | None) -> int:
    reserve_path, reserve_body, commit_path, commit_body = requests.pair(0, n)
    t0 = time.perf_counter_ns()
    status, body = await send(reserve_path, reserve_body)  # type: ignore[operator]
    t1 = time.perf_counter_ns()
    status2, body2 = await send(commit_path, commit_body)  # type: ignore[operator]
    t2 = time.perf_counter_ns()
    if window is not None:
        if status not in (200, 201) or status2 != 200:
            window.errors += 1
            if not window.first_error:
                window.first_error = f"{status} {body[:200]!r} / {status2} {body2[:200]!r}"
        window.requests += 2
        window.reserve_ns.append(t1 - t0)
        window.commit_ns.append(t2 - t1)
    return n + 1


def idle(target: Target, seconds: float, window: Window) -> None:
    cpu0, t0 = process_runtime_s(target.pid), time.perf_counter()
    time.sleep(seconds)
    window.idle_s = time.perf_counter() - t0
    window.idle_cpu_s = process_runtime_s(target.pid) - cpu0


def show(w: Window, rnd: int) -> None:
    r, c = sorted(w.reserve_ns), sorted(w.commit_ns)
    print(
        f"round {rnd} {w.variant:>8}: {w.requests / w.seconds:6.1f} req/s  "
        f"CPU {w.us_per_request:6.1f} µs/req (net of background {w.net_us_per_request:6.1f}; "
        f"background {w.background_us_per_s:6.0f} µs/s; "
        f"kernel {w.sys_s / (w.user_s + w.sys_s) if w.user_s + w.sys_s else 0:.0%})  "
        f"reserve p50/p99 {pct(r, 50):.3f}/{pct(r, 99):.3f} ms  "
        f"commit p50/p99 {pct(c, 50):.3f}/{pct(c, 99):.3f} ms  "
        f"client {w.client_cpu_s / w.requests * 1e6:.0f} µs/req  errors {w.errors}  "
        f"load {w.load}  steal {w.steal:.1%}  others {w.others_cpus:.2f} CPUs  "
        f"halts {w.halts_per_s:.0f}/s" + (f"  spin {w.spin_cpus:.2f} CPUs" if _SPINNERS else ""),
        flush=True,
    )
    if w.first_error:
        print(f"  first error: {w.first_error}", flush=True)


def summary(windows: list[Window]) -> None:
    print("\nper variant, median [min–max] over rounds:")
    for name in dict.fromkeys(w.variant for w in windows):
        ws = [w for w in windows if w.variant == name]

        def med(values: list[float]) -> str:
            return f"{statistics.median(values):.1f} [{min(values):.1f}–{max(values):.1f}]"

        r = sorted(x for w in ws for x in w.reserve_ns)
        c = sorted(x for w in ws for x in w.commit_ns)
        print(
            f"  {name:>8}: CPU µs/req {med([w.us_per_request for w in ws])}, "
            f"net {med([w.net_us_per_request for w in ws])}, "
            f"background µs/s {med([w.background_us_per_s for w in ws])}; "
            f"all rounds: reserve p50/p99 {pct(r, 50):.3f}/{pct(r, 99):.3f} ms, "
            f"commit p50/p99 {pct(c, 50):.3f}/{pct(c, 99):.3f} ms"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", type=float, default=40.0, help="pairs per second (0: back to back)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured window")
    p.add_argument("--idle", type=float, default=3.0, help="seconds of the idle window")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=DIR")
    p.add_argument(
        "--echo",
        action="store_true",
        help="also probe bench/raw_echo.py (the HTTP floor: uvicorn, a decode, an encode)",
    )
    p.add_argument("--no-pin", action="store_true")
    p.add_argument(
        "--awake",
        action="store_true",
        help="keep every CPU awake: one SCHED_IDLE busy-spinner per CPU for the run",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="BUDGETD_X=VALUE",
        help="a setting for every variant's service (e.g. BUDGETD_DELIVERY_INTERVAL_S=0)",
    )
    args = p.parse_args(argv)
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server not found on PATH")
    variants: list[tuple[str, Path | None]] = [
        (v.split("=", 1)[0], Path(v.split("=", 1)[1]).resolve()) for v in args.variant
    ] or [("service", None)]
    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) >= 2
    server_cpu, client_cpu = (cpus[0], cpus[1]) if pin else (None, None)
    pinning = f"servers CPU {server_cpu}, client and redis CPU {client_cpu}" if pin else "none"
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    tmp = Path(tempfile.mkdtemp(prefix="budgetd-lowload-"))
    procs = Processes(tmp)
    stack = contextlib.ExitStack()
    try:
        awake = stack.enter_context(AwakeCores()) if args.awake else None
        _SPINNERS.extend(awake.pids if awake else [])
        targets = []
        for name, app_dir in variants:
            extra = dict(e.split("=", 1) for e in args.env)
            pid, port, key = start_service(procs, tmp, name, app_dir, server_cpu, client_cpu, extra)
            targets.append(Target(name, pid, port, Requests(port, key, 100, 10)))
        if args.echo:
            echo_env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGETD_")}
            port = free_port()
            cmd = uvicorn_cmd("raw_echo:app", port, BENCH_DIR)
            echo = procs.start("raw_echo", cmd, env=echo_env, cpu=server_cpu)
            wait_until("listening", lambda: _listening(port), echo, procs, "raw_echo")
            targets.append(Target("raw_echo", echo.pid, port, Requests(port, "none", 100, 10)))
        _OURS.extend([os.getpid(), *(p.pid for _, p in procs.running)])
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})
        if uvloop is not None:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        print(
            f"low-load probe: {args.rate:g} pairs/s ({'back to back' if not args.rate else 'paced'}"
            f"), one pair at a time, {args.duration:g} s windows, {args.idle:g} s idle; "
            f"pinning: {pinning}; "
            f"load {load_average()}",
            flush=True,
        )
        print(
            f"{cpuidle()}; "
            + (f"{awake.describe()} (the load average counts them)" if awake else "CPUs may halt"),
            flush=True,
        )
        windows: list[Window] = []
        n = {t.name: 0 for t in targets}
        time.sleep(2)  # let start-up work (first job runs) settle
        for rnd in range(args.rounds):
            order = targets if rnd % 2 == 0 else targets[::-1]
            for t in order:
                w = Window(t.name)
                idle(t, args.idle, w)
                n[t.name] = asyncio.run(paced(t, args.rate, args.duration, w, n[t.name]))
                show(w, rnd + 1)
                windows.append(w)
        summary(windows)
        print(f"load at the end {load_average()}")
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        stack.close()
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
