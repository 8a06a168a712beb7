"""A/B of the pipeline's write coalescing (``BUDGETD_REDIS_COALESCE``), alternately, both orders.

    chrt -r 10 .venv/bin/python bench/coalesce_ab.py [--rounds 3] [--duration 5] [--no-http]

Each round runs off/on, the next on/off (so neither variant always goes first):
  * through HTTP: ``bench/reserve_commit.py --echo none`` with the service app below (``app_off``
    or ``app_on``: the service with the setting forced, since the bench passes the service no
    ``BUDGETD_*`` of its own), plus Redis's socket reads per script call (``INFO``
    ``total_reads_processed`` over ``cmdstat_evalsha`` calls, sampled each second from the
    bench's own redis-server: the batching coalescing achieved);
  * in process: ``bench/redis_work.py`` with the store built with or without coalescing (8 in
    flight through the engine, no HTTP; its replay figures do not depend on the setting).

One JSON line per run. Figures and reading: docs/performance.md, "Write coalescing (issue 13)".
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

BENCH = Path(__file__).resolve().parent


def __getattr__(name: str) -> Any:
    """``coalesce_ab:app_on`` / ``coalesce_ab:app_off``: the service with the setting forced."""
    if name not in ("app_on", "app_off"):
        raise AttributeError(name)
    os.environ["BUDGETD_REDIS_COALESCE"] = "true" if name == "app_on" else "false"
    from budgetd.asgi import app  # noqa: PLC0415 (reads the setting just set, at import)

    return app


def _reads_per_call(bench: subprocess.Popen[bytes], out: dict[str, float]) -> None:
    """Sample the bench's redis-server (its child) each second until it exits."""
    port = None
    while port is None:
        children = subprocess.run(
            ["pgrep", "-a", "-P", str(bench.pid)], check=False, capture_output=True, text=True
        ).stdout
        if match := re.search(r"redis-server.*?--port (\d+)", children):
            port = int(match.group(1))
        elif bench.poll() is not None:
            return
        else:
            time.sleep(0.1)
    client = redis.Redis(port=port)
    samples: list[tuple[int, int]] = []
    try:
        while True:
            info = client.info("all")
            calls = int(info.get("cmdstat_evalsha", {}).get("calls", 0))
            samples.append((int(info["total_reads_processed"]), calls))
            time.sleep(1)
    except redis.RedisError:
        pass
    steps = [
        (b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(samples) if b[1] - a[1] > 1000
    ]
    steps = steps[1:-1] or steps  # the steady middle of the measured window
    if steps:
        out["reads_per_script_call"] = round(sum(s[0] for s in steps) / sum(s[1] for s in steps), 3)


def http_run(variant: str, duration: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "run.json"
        bench = subprocess.Popen(
            [
                sys.executable,
                str(BENCH / "reserve_commit.py"),
                *("--duration", str(duration), "--warmup", "1", "--echo", "none"),
                *("--service-app", f"coalesce_ab:app_{variant}"),
                *("--service-app-dir", str(BENCH), "--json", str(report)),
            ],
            stdout=subprocess.DEVNULL,
        )
        reads: dict[str, float] = {}
        sampler = threading.Thread(target=_reads_per_call, args=(bench, reads))
        sampler.start()
        bench.wait()
        sampler.join()
        s = json.loads(report.read_text())["service"]
    return {
        "http": variant,
        "pairs_per_s": s["pairs_per_s"],
        "reserve_p50_p99_ms": [round(s["reserve"]["p50_ms"], 2), round(s["reserve"]["p99_ms"], 2)],
        "commit_p50_p99_ms": [round(s["commit"]["p50_ms"], 2), round(s["commit"]["p99_ms"], 2)],
        "errors": s["errors"],
        "service_cpu_us_per_request": s["cpu_us_per_request"],
        "redis_cpu_us_per_pair": s["redis_cpu_us_per_pair"],
        **reads,
        "load_average": s["neighbours"]["loadavg_1m"],
        "steal": s["neighbours"]["steal"],
        "others_on_server_cpu": s["neighbours"]["other_load_on_server_cpu"],
    }


def in_process_run(variant: str) -> list[dict[str, Any]]:
    code = (
        "import functools, sys; sys.path.insert(0, sys.argv[1]); import redis_work; "
        "from budgetd.store.connect import redis_store; "
        "redis_work.redis_store = functools.partial(redis_store, coalesce=sys.argv[2] == 'on'); "
        "sys.argv[1:] = []; redis_work.main()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(BENCH), variant],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    keep = (
        "policy",
        "redis_cpu_us_per_pair",
        "pairs_per_s",
        "load_average_before_after",
        "steal_pct",
    )
    return [
        {"in_process": variant, **{k: json.loads(line)[k] for k in keep}}
        for line in out.splitlines()
        if line.startswith("{")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--no-http", action="store_true")
    args = parser.parse_args()
    for i in range(args.rounds):
        for variant in ("off", "on") if i % 2 == 0 else ("on", "off"):
            if not args.no_http:
                print(json.dumps(http_run(variant, args.duration)), flush=True)
            for row in in_process_run(variant):
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
