"""Engine fixtures: a policy written in the test, a frozen clock, and an Engine over ``store``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from budgetd.clock import FrozenClock
from budgetd.contract import ReserveRequest
from budgetd.engine import Engine
from budgetd.metrics import Metrics
from budgetd.policy.registry import PolicyRegistry
from budgetd.store.scripted import ScriptStore
from tests.conftest import TEST_PRICING

HAIKU = "claude-haiku-test"
ACME = """
org: acme
timezone: America/New_York
defaults:
  hold_ttl_s: 60
budgets:
  - {name: org-month, scope: org, limit_usd: 100, period: month}
  - {name: feature-day, scope: feature, limit_usd: 10, period: day}
  - {name: user-day, scope: user, limit_usd: 1, period: day, overrides: {alice: 2}}
rate_limits:
  - name: user-rate
    scope: user
    requests_per_minute: 100000
    input_tokens_per_minute: 100000000
    output_tokens_per_minute: 100000000
"""


def reserve_request(rid: str, **kw: object) -> ReserveRequest:
    """Bob's chat call on acme (100 input tokens, at most 100 out); ``kw`` overrides any field."""
    base: dict[str, object] = {
        "org": "acme",
        "model": HAIKU,
        "input_tokens": 100,
        "max_tokens": 100,
        "user": "bob",
        "feature": "chat",
        "reservation_id": rid,
    }
    base.update(kw)
    return ReserveRequest(**base)  # type: ignore[arg-type]


def make_registry(tmp_path: Path, *policies: str) -> PolicyRegistry:
    for i, text in enumerate(policies):
        (tmp_path / f"policy{i}.yaml").write_text(text)
    registry = PolicyRegistry(tmp_path, TEST_PRICING)
    status = registry.reload()
    assert status.ok, status.errors
    return registry


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 11, 23, 15, 0, tzinfo=UTC))


@pytest.fixture
def make_engine(tmp_path: Path, store: ScriptStore, clock: FrozenClock) -> Callable[..., Engine]:
    def build(*policies: str) -> Engine:
        return Engine(make_registry(tmp_path, *(policies or (ACME,))), store, clock, Metrics())

    return build


@pytest.fixture
def engine(make_engine: Callable[..., Engine]) -> Engine:
    return make_engine()
