"""Events the scripts emit: a shadow budget entering and leaving would-deny, once each."""

from __future__ import annotations

from collections.abc import Callable

from budgetd.contract import Grant, ReserveRequest
from budgetd.engine import Engine
from budgetd.store import keys
from budgetd.store.scripted import ScriptStore

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
