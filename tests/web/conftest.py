"""A real ``budgetd serve`` on a real Redis, with traffic, for the browser tests; headless
Debian Chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis as redis_lib

from tests.api.conftest import write_keys, write_policy
from tests.servers import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

POLICY = """
org: acme
timezone: UTC
teams:
  chatters: {users: [alice, carol]}
budgets:
  - {name: org-month, scope: org, limit_usd: 50, period: month, thresholds_pct: [50, 80, 100]}
  - {name: feature-day, scope: feature, limit_usd: 20, period: day}
  - name: user-day
    scope: user
    limit_usd: 0.05
    period: day
    thresholds_pct: [50, 80]
    overrides: {alice: 0.2}
  - {name: team-day, scope: team, limit_usd: 20, period: day}
  - {name: key-day, scope: key, limit_usd: 20, period: day}
  - {name: project-day, scope: tag, match: "project:*", limit_usd: 20, period: day}
  - {name: run, scope: session, limit_usd: 20, period: session, idle: 30m}
"""
ALICE_TAGS = ["project:web"]
"""Alice's calls carry a project tag (the app key, named ``web``, makes every call)."""


@dataclass
class Service:
    url: str
    admin_key: str
    app_key: str
    costs: dict[str, int]
    """What each user was charged, as the service answered."""


def _wait(what: str, check: object, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("web")
    directory = tmp / "policies"
    write_policy(directory, POLICY)
    keys_file = tmp / "keys.yaml"
    admin, app_key = write_keys(keys_file, ("acme", "admin", "ops"), ("acme", "app", "web"))
    # The app key is carol's: the user's own view shows the user its entry names, no other.
    keys_file.write_text(keys_file.read_text() + "    user: carol\n")
    port = free_port()
    env = {
        **os.environ,
        "BUDGETD_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/5",
        "BUDGETD_POLICY_DIR": str(directory),
        "BUDGETD_KEYS_FILE": str(tmp / "keys.yaml"),
        "BUDGETD_PORT": str(port),
        "BUDGETD_REPORTS_INTERVAL_S": "0.2",
        "BUDGETD_DELIVERY_INTERVAL_S": "0",
    }
    redis_lib.Redis.from_url(env["BUDGETD_REDIS_URL"]).flushdb()
    budgetd = shutil.which("budgetd", path=str(Path(sys.executable).parent))
    assert budgetd is not None
    proc = subprocess.Popen(
        [budgetd, "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "serve.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait("the service", lambda: httpx.get(f"{url}/healthz").status_code == 200)
        costs = traffic(url, app_key)
        as_admin = {"Authorization": f"Bearer {admin}"}
        total = sum(costs.values())
        _wait(
            "the follower",
            lambda: (
                httpx.get(f"{url}/v1/admin/reports/usage?org=acme", headers=as_admin).json()[
                    "total"
                ]["cost_micros"]
                == total
            ),
        )
        yield Service(url=url, admin_key=admin, app_key=app_key, costs=costs)
    finally:
        proc.terminate()
        proc.wait(10)


def traffic(url: str, key: str) -> dict[str, int]:
    """Calls for alice, bob and carol until bob's small budget blocks him (a hard_limit
    event after crossing his 50 % and 80 % thresholds)."""
    costs: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {key}"}
    plan = (
        [("alice", "chat", "claude-haiku-test")] * 6
        + [("bob", "search", "claude-sonnet-test")] * 4
        + [("carol", "chat", "claude-haiku-test")] * 3
    )
    with httpx.Client(base_url=url, headers=headers) as client:
        for i, (user, feature, model) in enumerate(plan):
            r = client.post(
                "/v1/reservations",
                json={
                    "org": "acme",
                    "user": user,
                    "feature": feature,
                    "model": model,
                    "input_tokens": 2000,
                    "max_tokens": 1000,
                    "reservation_id": f"w{i}",
                    "tags": ALICE_TAGS if user == "alice" else [],
                    "session": f"{user}-run" if user == "carol" else None,
                },
            )
            if r.status_code == 429:
                continue
            assert r.status_code == 201, r.text
            done = client.post(
                f"/v1/reservations/w{i}/commit",
                json={
                    "usage": {
                        "input_tokens": 1500 + i,
                        "output_tokens": 600,
                        "cache_read_input_tokens": 1000,
                    }
                },
            )
            assert done.status_code == 200, done.text
            costs[user] = costs.get(user, 0) + done.json()["cost_micros"]
    return costs
