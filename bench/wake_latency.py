"""Benchmark: what waking an idle process costs on this machine, halted CPUs or awake ones.

    chrt -r 10 python bench/wake_latency.py [--gap-ms 25] [--count 400] [--same-cpu]
        [--awake | --pm-qos]

Two processes, one on each of two CPUs (pinned), ping-pong one byte over a pair of pipes:
the pinger writes, the ponger (blocked in ``read``) wakes and writes back, the pinger (blocked
in ``read`` too) wakes and times the round trip. Between pings the pinger sleeps ``--gap-ms``,
so both CPUs go idle between round trips, as budgetd's do at 40 pairs/s; ``--gap-ms 0`` sends
the next ping at once (the CPUs never idle: the floor). A round trip is two wake-ups of a
process blocked in ``read``; across CPUs each is an inter-processor interrupt (on a VM, a
hypervisor exit), ``--same-cpu`` puts both on one CPU (a context switch, no IPI).

With ``--awake``, one ``SCHED_IDLE`` spinner per CPU (``_machine.AwakeCores``): no CPU halts,
a wake-up preempts a spinner. With ``--pm-qos``, the kernel's own way: ``/dev/cpu_dma_latency``
held at 0 µs for the run (root; the PM QoS request tuned's ``latency-performance`` profile
makes), so cpuidle picks only states with no exit latency (here ``POLL``): idle CPUs poll
instead of halting. Printed: round-trip p50, p90 and p99 in µs, halts per second, load
average and steal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import struct
import sys
import time
from collections.abc import Iterator

from _machine import AwakeCores, cpuidle, halts, load_average, steal_ticks


def pong(r: int, w: int, cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    while os.read(r, 1):
        os.write(w, b"o")


def measure(gap_s: float, count: int, cpus: tuple[int, int]) -> list[int]:
    to_r, to_w = os.pipe()
    back_r, back_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the ponger
        try:
            os.close(to_w)
            os.close(back_r)
            pong(to_r, back_w, cpus[1])
        finally:
            os._exit(0)
    os.close(to_r)
    os.close(back_w)
    os.sched_setaffinity(0, {cpus[0]})
    out = []
    try:
        for i in range(count + 20):
            if gap_s:
                time.sleep(gap_s)
            t0 = time.perf_counter_ns()
            os.write(to_w, b"i")
            os.read(back_r, 1)
            if i >= 20:  # the first ones warm up
                out.append(time.perf_counter_ns() - t0)
    finally:
        os.close(to_w)
        os.waitpid(pid, 0)
        os.close(back_r)
    return out


@contextlib.contextmanager
def pm_qos_zero() -> Iterator[None]:
    """A PM QoS CPU latency request of 0 µs, in force while the file stays open."""
    with open("/dev/cpu_dma_latency", "wb", buffering=0) as f:
        f.write(struct.pack("i", 0))
        yield


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gap-ms", type=float, default=25.0, help="idle time between round trips")
    p.add_argument("--count", type=int, default=400)
    p.add_argument("--same-cpu", action="store_true", help="pinger and ponger on one CPU")
    p.add_argument("--awake", action="store_true", help="one SCHED_IDLE spinner per CPU")
    p.add_argument("--pm-qos", action="store_true", help="hold /dev/cpu_dma_latency at 0 µs (root)")
    args = p.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("needs two CPUs")
    with (
        AwakeCores() if args.awake else contextlib.nullcontext() as awake,
        pm_qos_zero() if args.pm_qos else contextlib.nullcontext(),
    ):
        steal0, halts0, t0 = steal_ticks(), halts(), time.monotonic()
        pair = (cpus[0], cpus[0] if args.same_cpu else cpus[1])
        ns = sorted(measure(args.gap_ms / 1000, args.count, pair))
        steal1, halts1, t1 = steal_ticks(), halts(), time.monotonic()
        steal = (steal1[0] - steal0[0]) / max(1, steal1[1] - steal0[1])

        def q(p: float) -> float:
            return ns[min(len(ns) - 1, int(p * len(ns)))] / 1000

        print(
            f"gap {args.gap_ms:g} ms, {len(ns)} round trips, "
            f"{'one CPU' if args.same_cpu else 'two CPUs'}, "
            + ("awake (SCHED_IDLE spinners)" if awake else "")
            + ("PM QoS 0 µs (cpu_dma_latency)" if args.pm_qos else "")
            + ("" if awake or args.pm_qos else "CPUs may halt")
            + ": "
            + f"round trip p50 {q(0.5):.1f} µs, p90 {q(0.9):.1f}, p99 {q(0.99):.1f}; "
            f"halts {(halts1 - halts0) / (t1 - t0):.0f}/s; load {load_average()}; "
            f"steal {steal:.1%}; {cpuidle()}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
