"""The machine's neighbour load, printed by every bench next to its figures (the VM is shared:
a slow run is told apart from slow code by these)."""

from __future__ import annotations

import os
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
