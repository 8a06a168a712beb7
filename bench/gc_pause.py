"""Benchmark: how long a full garbage collection stops a budgetd worker, with the app's lasting
objects frozen (``budgetd.asgi``, the entry uvicorn workers import) and without (the same app
built by ``create_app``, as before the freeze).

    .venv/bin/python bench/gc_pause.py [--rounds 5]

Each variant runs in a fresh interpreter with the shipped policies (``policies/``, embedded
store): it builds the app, then times ``gc.collect()`` ``--rounds`` times and prints the median
and the objects a full collection walks. A full collection stops every call in flight on the
worker (the event loop is one thread); CPython runs one when enough objects have survived two
younger collections, so its length is a latency outlier of whatever is in flight then, not a
throughput cost. The figures move with the CPU's speed, not with the policy's traffic.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from _machine import load_average, steal_ticks

POLICIES = Path(__file__).resolve().parents[1] / "policies"
PROBE = """
import gc, statistics, sys, time
if sys.argv[1] == "frozen":
    import budgetd.asgi
else:
    from budgetd.app import create_app
    from budgetd.settings import from_env
    app = create_app(from_env())
    gc.collect()
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    gc.collect()
    times.append(time.perf_counter() - t)
print(statistics.median(times) * 1e3, len(gc.get_objects()), gc.get_freeze_count())
"""


def measure(variant: str, rounds: int) -> tuple[float, int, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGETD_")}
    env["BUDGETD_POLICY_DIR"] = str(POLICIES)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, variant, str(rounds)],
        check=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    ms, walked, frozen = done.stdout.split()
    return float(ms), int(walked), int(frozen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    steal, total = steal_ticks()
    print(f"load average {load_average()}, Python {sys.version.split()[0]}")
    for variant in ("unfrozen", "frozen"):
        ms, walked, frozen = measure(variant, args.rounds)
        print(
            f"{variant:>9}: full collection {ms:8.3f} ms (median of {args.rounds}), "
            f"walks {walked:,} objects, {frozen:,} frozen"
        )
    steal_after, total_after = steal_ticks()
    share = (steal_after - steal) / max(1, total_after - total)
    print(f"CPU steal during the runs: {share:.1%}; load average {load_average()}")


if __name__ == "__main__":
    main()
