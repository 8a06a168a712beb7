"""A reloaded policy applies to the next request: the engine's resolution and budget-slot caches
belong to one loaded policy set and start over with the next."""

from __future__ import annotations

from pathlib import Path

from budgetd.contract import Denied, Grant, ReserveRequest
from budgetd.engine import Engine
from tests.engine.conftest import ACME


def _req(rid: str) -> ReserveRequest:
    # claude-haiku-test: 300,000 input tokens = 300,000 µ$ ($0.30).
    return ReserveRequest(
        org="acme",
        model="claude-haiku-test",
        input_tokens=300_000,
        max_tokens=1,
        user="bob",
        feature="chat",
        reservation_id=rid,
    )


async def test_a_reloaded_limit_applies_to_the_next_reserve(engine: Engine, tmp_path: Path) -> None:
    assert isinstance(await engine.reserve(_req("a")), Grant)  # bob's user-day: $1
    before = await engine.budgets("acme", "bob", "chat", None)
    assert next(s for s in before.scopes if s.name == "user-day").limit == 1_000_000

    (tmp_path / "policy0.yaml").write_text(
        ACME.replace("overrides: {alice: 2}", "overrides: {alice: 2, bob: 0.5}")
    )
    assert engine.registry.reload().ok

    after = await engine.budgets("acme", "bob", "chat", None)
    user_day = next(s for s in after.scopes if s.name == "user-day")
    assert (user_day.limit, user_day.source) == (500_000, "override")
    denied = await engine.reserve(_req("b"))  # 300,005 held + 300,005 > $0.50
    assert isinstance(denied, Denied)
    assert [s.name for s in denied.scopes] == ["user-day"]
