"""The machine's neighbour load, printed by every bench next to its figures (the VM is shared:
a slow run is told apart from slow code by these)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, as ``/proc/loadavg`` gives them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def steal_ticks() -> tuple[int, int]:
    """(steal, total) ticks of all CPUs since boot, from the first line of ``/proc/stat`` (its
    first eight fields: guest time is already counted in user time)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return v[7], sum(v)


def process_cpu(pid: int) -> tuple[float, float]:
    """(utime, stime) of ``pid`` (all its threads), in seconds, from ``/proc/<pid>/stat``
    (counted in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


# -- always-awake cores (issue 13, fourth session) ---------------------------------------------

_CPUIDLE = Path("/sys/devices/system/cpu/cpuidle")
_HALTPOLL = Path("/sys/module/haltpoll/parameters")


def cpuidle() -> str:
    """How an idle CPU waits here: the cpuidle driver and governor, and the guest halt-poll
    window when the ``haltpoll`` driver is loaded (``guest_halt_poll_ns=0``: it halts at once)."""
    parts = []
    for name in ("current_driver", "current_governor"):
        with contextlib.suppress(OSError):
            parts.append(f"{name.removeprefix('current_')} {(_CPUIDLE / name).read_text().strip()}")
    with contextlib.suppress(OSError):
        poll_ns = (_HALTPOLL / "guest_halt_poll_ns").read_text().strip()
        shrink = (_HALTPOLL / "guest_halt_poll_allow_shrink").read_text().strip()
        parts.append(f"guest_halt_poll_ns {poll_ns} (allow_shrink {shrink})")
    return "cpuidle: " + (", ".join(parts) if parts else "none")


def halts() -> int:
    """Entries into a CPU's idle states other than polling, summed over the CPUs since boot
    (``/sys/devices/system/cpu/cpu*/cpuidle/state*/usage``): how often a CPU stopped (on a VM,
    a halt the hypervisor must wake). -1 when the kernel has no cpuidle states."""
    total, found = 0, False
    for state in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpuidle/state[0-9]*"):
        with contextlib.suppress(OSError):
            if (state / "name").read_text().strip() != "POLL":
                total += int((state / "usage").read_text())
                found = True
    return total if found else -1


_SPIN = """\
import ctypes, os, signal, sys
cpu, parent = int(sys.argv[1]), int(sys.argv[2])
signal.signal(signal.SIGINT, signal.SIG_DFL)
with __import__("contextlib").suppress(OSError, AttributeError):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
os.sched_setaffinity(0, {cpu})
while os.getppid() == parent:  # the parent died without a word: stop (checked every ~0.25 s)
    for _ in range(5_000_000):
        pass
"""


class AwakeCores:
    """One busy-spinning process per CPU at ``SCHED_IDLE``, each pinned to its CPU, for as long
    as the ``with`` lasts: no CPU ever halts, so waking a process is a context switch on a
    running core, not a halted vCPU the hypervisor must resume (what ``idle=poll``, a polling
    cpuidle governor, or a dedicated always-busy core give a production host).

    ``SCHED_IDLE`` runs only when nothing else wants the CPU and is preempted at once by any
    other task that wakes, real-time or not. Its CPU time is the spinners' own: subtract
    ``cpu_s()`` from a CPU-busy figure before calling the rest neighbours'. The load average
    counts the spinners (+1 per CPU once it has settled). They are killed on ``__exit__``
    (exception, Ctrl-C and SIGTERM-as-KeyboardInterrupt included), and each dies by itself
    when this process does (``PR_SET_PDEATHSIG``, and a check of its parent pid)."""

    def __init__(self, cpus: list[int] | None = None) -> None:
        self.cpus = sorted(os.sched_getaffinity(0)) if cpus is None else cpus
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> AwakeCores:
        try:
            for cpu in self.cpus:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", _SPIN, str(cpu), str(os.getpid())],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def cpu_s(self) -> float:
        """The spinners' CPU time so far (user + system), in seconds."""
        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                total += sum(process_cpu(pid))
        return total

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for proc in self.procs:
            proc.wait()
        self.procs.clear()

    def describe(self) -> str:
        return (
            f"awake cores: one SCHED_IDLE spinner on each of CPUs "
            f"{','.join(map(str, self.cpus))} (pids {','.join(map(str, self.pids))})"
        )
