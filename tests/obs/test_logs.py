"""Logs: one JSON object per line from every logger (budgetd, uvicorn, the access log), the
request id on the lines of its request, and an outage logged in a handful of lines, not one per
request and per job run."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx

from budgetd.logs import RateLimit
from tests.api.conftest import write_policy
from tests.deploy.service import Service
from tests.servers import start_redis

POLICY = """
org: acme
timezone: UTC
defaults:
  failure: fail_open
  rate_failure: fail_open
budgets:
  - {name: org-month, scope: org, limit_usd: 100, period: month}
"""
RESERVE = {"org": "acme", "model": "claude-haiku-test", "input_tokens": 100, "max_tokens": 50}


def json_lines(log: Path) -> list[dict[str, Any]]:
    lines = log.read_text().splitlines()
    assert lines
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    return parsed


def serve(tmp_path: Path, **env: str) -> Service:
    write_policy(tmp_path / "policies", POLICY)
    return Service(
        {"BUDGETD_POLICY_DIR": str(tmp_path / "policies"), "BUDGETD_SWEEP_INTERVAL_S": "1", **env},
        tmp_path / "budgetd.log",
    )


def test_a_reserve_is_logged_as_json_with_its_request_id(tmp_path: Path) -> None:
    service = serve(tmp_path)
    try:
        service.wait_ready()
        given = httpx.post(
            service.url + "/v1/reservations", json=RESERVE, headers={"X-Request-Id": "req-abc"}
        )
        assert given.status_code == 201 and given.headers["x-request-id"] == "req-abc"
        made = httpx.post(service.url + "/v1/reservations", json=RESERVE)
        assert made.status_code == 201
        generated = made.headers["x-request-id"]
    finally:
        service.stop()
    lines = json_lines(service.log)
    access = {line["request_id"]: line for line in lines if line["logger"] == "budgetd.access"}
    for rid in ("req-abc", generated):
        line = access[rid]
        assert line["route"] == "reserve" and line["status"] == 201 and line["level"] == "info"
        assert line["path"] == "/v1/reservations" and line["duration_ms"] > 0
        assert line["time"].endswith("Z")
    loggers = {line["logger"] for line in lines}
    assert {"budgetd", "uvicorn.error", "budgetd.access"} <= loggers  # one format for all


def test_redis_down_logs_a_few_lines_not_one_per_request(tmp_path: Path) -> None:
    redis = start_redis(tmp_path / "redis")
    service = serve(tmp_path, BUDGETD_REDIS_URL=redis.url, BUDGETD_REDIS_TIMEOUT_S="0.2")
    try:
        service.wait_ready()
        before = len(service.log.read_text().splitlines())
        redis.stop()
        with httpx.Client(base_url=service.url, timeout=10) as client:
            for _ in range(60):
                r = client.post("/v1/reservations", json=RESERVE, headers={"X-Request-Id": "down"})
                assert r.status_code == 201 and r.json()["degraded"] is True, r.text
            # The scheduler's jobs (sweep every second, delivery) fail meanwhile, too.
            for _ in range(30):
                assert client.get("/readyz").json()["store"]["ok"] is False
    finally:
        service.stop()
        redis.stop()
    lines = json_lines(service.log)[before:]
    problems = [line for line in lines if line["level"] in ("warning", "error", "critical")]
    # 60 degraded grants and every job run of several seconds: a few lines per call site.
    per_site: dict[tuple[str, str], int] = {}
    for line in problems:
        site = (line["logger"], line["message"].split(":")[0])
        per_site[site] = per_site.get(site, 0) + 1
    assert problems and max(per_site.values()) <= 3, per_site
    degraded = [line for line in problems if "granting without a hold" in line["message"]]
    assert degraded and all(line["request_id"] == "down" for line in degraded)


def test_rate_limit_counts_what_it_dropped() -> None:
    now = [0.0]
    limit = RateLimit(window_s=10, burst=2, clock=lambda: now[0])

    def record(msg: str = "store down: %s", level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("budgetd", level, __file__, 1, msg, ("x",), None)

    assert [limit.filter(record()) for _ in range(5)] == [True, True, False, False, False]
    assert limit.filter(record("another site"))  # per call site
    assert limit.filter(record(level=logging.INFO))  # info is never limited
    now[0] = 10.5
    first = record()
    assert limit.filter(first) and first.suppressed == 3  # type: ignore[attr-defined]
