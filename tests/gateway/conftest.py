"""A fake Anthropic upstream and a real ``budgetd gateway`` process in front of it, on a Redis of
our own; the tests read budgets and prices through an Engine on the same Redis and price table.

Orgs: ``gw-test`` (roomy budgets; every test measures the change it causes) and ``gw-poor``
and ``gw-poor-node`` (budgets one call exhausts, for denials)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from budgetd.auth import new_key
from budgetd.clock import SystemClock
from budgetd.contract import CostRequest
from budgetd.engine import Engine
from budgetd.gateway.upstream_keys import env_name
from budgetd.metrics import Metrics
from budgetd.policy.registry import PolicyRegistry
from budgetd.store.connect import redis_store
from budgetd.usage import Usage
from tests.gateway.procs import ROOT, UPSTREAM_KEY, Server, start_fake_upstream, start_gateway

MODEL = "claude-haiku-4-5"
ORGS_WITH_UPSTREAM = ("gw-test", "gw-poor", "gw-poor-node", "gw-spent-cc", "gw-keyed")
GW_TEST = """
org: gw-test
timezone: UTC
defaults: {hold_ttl_s: 600}
budgets:
  - {name: org-month, scope: org, limit_usd: 1000, period: month}
  - {name: user-day, scope: user, limit_usd: 100, period: day}
  - {name: feature-day, scope: feature, limit_usd: 100, period: day}
  - {name: per-run, scope: session, limit_usd: 0.05, period: session, idle: 30m}
"""
GW_KEYED = """
org: gw-keyed
timezone: UTC
defaults: {hold_ttl_s: 600}
budgets:
  - {name: org-month, scope: org, limit_usd: 1000, period: month}
  - {name: per-key, scope: key, limit_usd: 0.05, period: month}
  - {name: per-project, scope: tag, match: "project:*", limit_usd: 100, period: month}
"""
GW_POOR = """
org: {org}
timezone: UTC
defaults: {{hold_ttl_s: 600}}
budgets:
  - {{name: tiny-month, scope: org, limit_usd: 0.05, period: month}}
"""


@dataclass
class Keys:
    app: str
    """gw-test, charged to user alice and feature chat; may not name others."""
    shared: str
    """gw-test, feature backend; callers name the user per call (x-budgetd-user)."""
    poor: str
    """gw-poor (the Python SDK's denials)."""
    poor_node: str
    """gw-poor-node (the TypeScript SDK's and Claude Code's denials)."""
    spent_cc: str
    """gw-spent-cc: $5 a month, room for one Claude Code call's worst case, until it is spent."""
    no_upstream: str
    """gw-no-upstream: an org the operator gave no Anthropic key."""
    keyed: str
    """gw-keyed, key name ``keyed-a``: a $0.05 key budget."""
    keyed_other: str
    """gw-keyed, key name ``keyed-b``: the same budget, its own counter."""


def _entry(key: str, org: str, **extra: Any) -> str:
    from budgetd.auth import digest  # noqa: PLC0415

    lines = [f"  - sha256: {digest(key)}", f"    org: {org}", "    role: app"]
    lines += [f"    {k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in extra.items()]
    return "\n".join(lines)


@dataclass
class Setup:
    gateway: Server
    upstream: Server
    keys: Keys
    policy_dir: Path
    redis_url: str


@pytest.fixture(scope="session")
def gateway_setup(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("gateway")
    policies = work / "policies"
    policies.mkdir()
    (policies / "pricing.yaml").write_text((ROOT / "policies" / "pricing.yaml").read_text())
    (policies / "gw-test.yaml").write_text(GW_TEST)
    (policies / "gw-keyed.yaml").write_text(GW_KEYED)
    for org in ("gw-poor", "gw-poor-node"):
        (policies / f"{org}.yaml").write_text(GW_POOR.format(org=org))
    (policies / "gw-spent-cc.yaml").write_text(
        GW_POOR.format(org="gw-spent-cc").replace("limit_usd: 0.05", "limit_usd: 5")
    )
    keys = Keys(
        app=new_key(),
        shared=new_key(),
        poor=new_key(),
        poor_node=new_key(),
        spent_cc=new_key(),
        no_upstream=new_key(),
        keyed=new_key(),
        keyed_other=new_key(),
    )
    (policies / "gw-no-upstream.yaml").write_text(GW_POOR.format(org="gw-no-upstream"))
    (work / "keys.yaml").write_text(
        "keys:\n"
        + "\n".join(
            [
                _entry(keys.app, "gw-test", name="app", user="alice", feature="chat"),
                _entry(
                    keys.shared,
                    "gw-test",
                    name="shared",
                    feature="backend",
                    attribution_headers=True,
                ),
                _entry(keys.poor, "gw-poor", name="poor", user="bob"),
                _entry(keys.poor_node, "gw-poor-node", name="poor-node"),
                _entry(keys.spent_cc, "gw-spent-cc", name="spent-cc"),
                _entry(keys.no_upstream, "gw-no-upstream", name="no-upstream"),
                _entry(keys.keyed, "gw-keyed", name="keyed-a"),
                _entry(keys.keyed_other, "gw-keyed", name="keyed-b"),
            ]
        )
        + "\n"
    )
    # Its own database: other suites flush db 0 of the shared test server.
    url = redis_url.rsplit("/", 1)[0] + "/7"
    upstream = start_fake_upstream(work)
    env = {
        "BUDGETD_REDIS_URL": url,
        "BUDGETD_POLICY_DIR": str(policies),
        "BUDGETD_KEYS_FILE": str(work / "keys.yaml"),
        "BUDGETD_POLICY_POLL_S": "0",
        "BUDGETD_GATEWAY_UPSTREAM_URL": upstream.url,
        # One variable per org (gw-no-upstream has none): the lookup an operator would use.
        **{env_name(org): UPSTREAM_KEY for org in ORGS_WITH_UPSTREAM},
        "BUDGETD_GATEWAY_READ_TIMEOUT_S": "3",
    }
    gateway = start_gateway(work, env)
    yield Setup(gateway, upstream, keys, policies, url)
    gateway.stop()
    upstream.stop()


class Ledger:
    """Reads budgets and prices through an Engine on the gateway's Redis and price table."""

    def __init__(self, setup: Setup) -> None:
        registry = PolicyRegistry(setup.policy_dir, None)
        status = registry.reload()
        assert status.ok, status.errors
        self.store = redis_store(setup.redis_url, timeout_s=5.0)
        self.engine = Engine(registry, self.store, SystemClock(), Metrics())

    async def org(
        self, org: str = "gw-test", *, user: str | None = None, feature: str | None = None
    ) -> dict[str, tuple[int, int]]:
        """(spent, held) micros of every budget of ``org`` for that user / feature."""
        result = await self.engine.budgets(org, user, feature, None)
        return {
            f"{s.scope}:{s.name}": (s.spent_micros or 0, s.held_micros or 0)
            for s in result.scopes
            if s.kind == "budget"
        }

    async def settled(self, org: str = "gw-test", **who: str | None) -> dict[str, tuple[int, int]]:
        """The budgets once no hold is open (the gateway settles just after the answer's last
        byte, so a test may look a moment before it did)."""
        deadline = time.monotonic() + 10
        while True:
            now = await self.org(org, **who)
            if all(held == 0 for _, held in now.values()) or time.monotonic() > deadline:
                return now
            await asyncio.sleep(0.01)

    def price(self, model: str, usage: dict[str, Any], *, batch: bool = False) -> int:
        request = CostRequest(model=model, usage=msgspec.convert(usage, Usage), batch=batch)
        return self.engine.price(request).cost_micros


@pytest.fixture
async def ledger(gateway_setup: Setup) -> AsyncIterator[Ledger]:
    made = Ledger(gateway_setup)
    yield made
    await made.store.close()


def upstream_log(setup: Setup) -> list[dict[str, Any]]:
    log: list[dict[str, Any]] = httpx.get(setup.upstream.url + "/_fake/log").json()
    return log


def spent(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, int]:
    return {name: after[name][0] - before.get(name, (0, 0))[0] for name in after}
