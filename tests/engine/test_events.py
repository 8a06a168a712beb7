"""Events the scripts emit: a shadow budget entering and leaving would-deny, once each; the
thresholds a record crosses; and a commit on a rolling window judged on the whole window."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from budgetd.clock import FrozenClock
from budgetd.contract import CommitRequest, Grant, ReserveRequest, UsageRequest
from budgetd.engine import Engine
from budgetd.store import keys
from budgetd.store.scripted import ScriptStore
from budgetd.usage import Usage

SHADOW = """
org: acme
timezone: UTC
budgets:
  - {name: trial, scope: org, limit_usd: 0.01, period: day, mode: shadow, thresholds_pct: []}
"""


def req(rid: str) -> ReserveRequest:
    # claude-haiku-test: 6,000 input tokens = 6,000 µ$ (60 % of the $0.01 shadow budget).
    return ReserveRequest(
        org="acme", model="claude-haiku-test", input_tokens=6000, max_tokens=1, reservation_id=rid
    )


async def _kinds(store: ScriptStore) -> list[str]:
    return [f["type"] for _, f in await store.client.xrange(keys.events("acme"))]


async def test_shadow_budget_enters_and_leaves_would_deny(
    make_engine: Callable[..., Engine], store: ScriptStore
) -> None:
    engine = make_engine(SHADOW)
    assert isinstance(await engine.reserve(req("a")), Grant)
    over = await engine.reserve(req("b"))  # 12,010 µ$ > 10,000: shadow never denies
    assert isinstance(over, Grant)
    assert [w.kind for w in over.warnings] == ["shadow_would_deny"]
    assert await _kinds(store) == ["shadow_would_deny"]
    await engine.release("acme", "b")  # back to 6,005 µ$
    assert await _kinds(store) == ["shadow_would_deny", "shadow_clear"]
    assert isinstance(await engine.reserve(req("c")), Grant)  # over again, same period
    assert await _kinds(store) == ["shadow_would_deny", "shadow_clear"]  # once per period


ROLLING = """
org: acme
timezone: UTC
budgets:
  - {name: day-rolling, scope: org, limit_usd: 0.01, period: 24h, thresholds_pct: [50, 80]}
"""


async def _thresholds(store: ScriptStore) -> list[str]:
    return [
        f["threshold"]
        for _, f in await store.client.xrange(keys.events("acme"))
        if f["type"] == "threshold"
    ]


async def test_usage_recorded_without_a_reservation_emits_the_thresholds_it_crosses(
    make_engine: Callable[..., Engine], store: ScriptStore
) -> None:
    engine = make_engine(ROLLING)
    usage = UsageRequest(
        org="acme", model="claude-haiku-test", usage=Usage(input_tokens=6000, output_tokens=0)
    )
    await engine.record(usage)  # 6,000 of 10,000 µ$
    assert await _thresholds(store) == ["50"]
    await engine.record(usage)
    assert await _thresholds(store) == ["50", "80"]


async def test_a_commit_on_a_rolling_window_counts_the_spend_of_earlier_hours(
    make_engine: Callable[..., Engine], store: ScriptStore, clock: FrozenClock
) -> None:
    engine = make_engine(ROLLING)
    await engine.record(
        UsageRequest(
            org="acme", model="claude-haiku-test", usage=Usage(input_tokens=6000, output_tokens=0)
        )
    )
    clock.advance(timedelta(hours=2))  # the 6,000 µ$ now sit in an earlier sub-bucket
    small = ReserveRequest(
        org="acme", model="claude-haiku-test", input_tokens=1000, max_tokens=1, reservation_id="s"
    )
    assert isinstance(await engine.reserve(small), Grant)  # 6,000 + 1,005: under 80 %
    assert await _thresholds(store) == ["50"]
    usage = Usage(input_tokens=1000, output_tokens=500)  # 3,500 µ$: the window reaches 9,500
    await engine.commit("acme", "s", CommitRequest(usage=usage))
    assert await _thresholds(store) == ["50", "80"]
