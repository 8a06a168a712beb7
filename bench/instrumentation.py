"""Benchmark: what the instrumentation adds to one request, in CPU microseconds, measured
in-process (the HTTP benchmark's CPU-per-request figure moves by more than this between two
runs of the same code on a shared machine).

    .venv/bin/python bench/instrumentation.py [--requests 50000]

It times, per request:
  * ``observe.Observed`` around a do-nothing ASGI app (request id, route and outcome, the
    latency histogram, the X-Request-Id header), minus the bare app; then what the JSON
    access log line adds (written to /dev/null);
  * the metric calls a reserve makes besides (the decision counter, one store-call histogram
    observation, the utilisation and remaining gauges of two org budgets);
in prometheus-client's single-process mode and in multiprocess mode (BUDGETD_WORKERS > 1),
each in a fresh interpreter (the mode is chosen when prometheus_client is first imported).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

CHILD = r"""
import asyncio, json, sys, time
from budgetd import logs
from budgetd.metrics import Metrics
from budgetd.observe import Observed

logs.configure("info")  # the JSON access log to stderr, which the parent sends to /dev/null

N = int(sys.argv[1])
BUDGETS = (("org-month", 100_000_000, 1_234), ("org-day", 5_000_000, 99))
metrics = Metrics()
scope = {"type": "http", "method": "POST", "path": "/v1/reservations", "query_string": b"",
         "headers": [(b"host", b"x"), (b"content-type", b"application/json")]}
async def receive(): return {"type": "http.request", "body": b"", "more_body": False}
async def send(message): pass
async def bare(scope, receive, send):
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"{}", "more_body": False})
observed = Observed(bare, metrics, access_log=False)
logged = Observed(bare, metrics, access_log=True)

async def loop(app):
    started = time.process_time()
    for _ in range(N):
        await app(dict(scope), receive, send)
    return (time.process_time() - started) / N * 1e6

async def main():
    await loop(observed)  # warm up
    bare_us = await loop(bare)
    observed_us = await loop(observed)
    logged_us = await loop(logged)
    decided = metrics.decisions.labels(outcome="granted")
    started = time.process_time()
    for _ in range(N):
        decided.inc()
        metrics.observe_store_call("reserve", 0.0007, True)
        metrics.observe_budgets("acme", BUDGETS)
    engine_us = (time.process_time() - started) / N * 1e6
    print(json.dumps({"bare_us": bare_us, "observed_us": observed_us, "logged_us": logged_us,
                      "engine_us": engine_us}))

asyncio.run(main())
"""


def run(requests: int, multiprocess: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with tempfile.TemporaryDirectory() as directory:
        if multiprocess:
            env["PROMETHEUS_MULTIPROC_DIR"] = directory
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(requests)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            check=True,
        )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=50_000)
    args = p.parse_args()
    for mode, multi in (("single-process", False), ("multiprocess", True)):
        r = run(args.requests, multi)
        wrapper = r["observed_us"] - r["bare_us"]
        access = r["logged_us"] - r["observed_us"]
        print(
            f"{mode:15} Observed {wrapper:4.1f} µs/request, + access log {access:4.1f} µs; "
            f"a reserve's metric calls {r['engine_us']:4.1f} µs"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
