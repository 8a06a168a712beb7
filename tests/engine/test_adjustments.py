"""Admin adjustments: one counter moves, in the same script as its ledger entry, once per id;
a credit never takes a counter below zero; reconcile stays exact through commits, adjustments
and a trim."""

from __future__ import annotations

from datetime import timedelta

import pytest

from budgetd import ledger
from budgetd.adjustments import adjust
from budgetd.clock import FrozenClock
from budgetd.contract import AdjustmentRequest, CommitRequest, Grant, ReserveRequest
from budgetd.engine import Engine
from budgetd.errors import Conflict, InvalidRequest
from budgetd.store import keys
from budgetd.store.scripted import ScriptStore
from budgetd.usage import Usage

ADMIN = "admin:ops"


def _adj(
    amount: int, budget: str = "user-day", entity: str | None = "alice", **kw: str
) -> AdjustmentRequest:
    return AdjustmentRequest(
        org="acme", budget=budget, entity=entity, amount_micros=amount, reason="refund", **kw
    )


async def _spent(engine: Engine, user: str = "alice") -> dict[str, int]:
    view = await engine.budgets("acme", user, "chat", None)
    return {s.name: s.spent_micros or 0 for s in view.scopes if s.kind == "budget"}


async def _spend(engine: Engine, rid: str, output_tokens: int) -> None:
    grant = await engine.reserve(
        ReserveRequest(
            org="acme",
            model="claude-haiku-test",
            input_tokens=100,
            max_tokens=1000,
            user="alice",
            feature="chat",
            reservation_id=rid,
        )
    )
    assert isinstance(grant, Grant)
    usage = Usage(input_tokens=100, output_tokens=output_tokens)
    await engine.commit("acme", rid, CommitRequest(usage=usage))


async def test_an_adjustment_moves_only_its_counter_and_lands_in_the_ledger(
    engine: Engine, store: ScriptStore
) -> None:
    await _spend(engine, "r1", 200)  # 100 × 1 + 200 × 5 = 1,100 µ$
    before = await _spent(engine)
    result = await adjust(engine, _adj(-400, adjustment_id="a1"), ADMIN)
    assert (result.spent_micros, result.entity, result.replayed) == (700, "alice", False)
    after = await _spent(engine)
    assert after == {**before, "user-day": before["user-day"] - 400}

    entries = [f async for _, f in ledger.entries(store, "acme")]
    assert [e["kind"] for e in entries] == ["commit", "adjustment"]
    entry = entries[-1]
    assert (entry["cost_micros"], entry["reason"], entry["by"], entry["user"]) == (
        "-400",
        "refund",
        ADMIN,
        "alice",
    )
    assert entry["charged"] == keys.charged(
        keys.counters("acme", result.period), keys.budget_field("user-day", "alice") + "|s"
    )


async def test_an_adjustment_resolves_once_per_id(engine: Engine) -> None:
    await _spend(engine, "r1", 200)
    first = await adjust(engine, _adj(-400, adjustment_id="a1"), ADMIN)
    again = await adjust(engine, _adj(-400, adjustment_id="a1"), ADMIN)
    assert again.replayed and (again.ledger_id, again.spent_micros) == (first.ledger_id, 700)
    assert (await _spent(engine))["user-day"] == 700
    with pytest.raises(Conflict):
        await adjust(engine, _adj(-300, adjustment_id="a1"), ADMIN)
    assert (await _spent(engine))["user-day"] == 700


async def test_a_replay_after_the_period_rolled_answers_as_the_first_call(
    engine: Engine, clock: FrozenClock
) -> None:
    first = await adjust(engine, _adj(300, adjustment_id="a1"), ADMIN)
    clock.advance(timedelta(days=1))
    again = await adjust(engine, _adj(300, adjustment_id="a1"), ADMIN)
    assert again.replayed and (again.period, again.spent_micros) == (first.period, 300)
    assert (await _spent(engine))["user-day"] == 0  # the new day's counter did not move


async def test_a_credit_never_takes_a_counter_below_zero(
    engine: Engine, store: ScriptStore
) -> None:
    await _spend(engine, "r1", 200)
    with pytest.raises(InvalidRequest) as caught:
        await adjust(engine, _adj(-1101), ADMIN)
    assert caught.value.field == "amount_micros" and "1100" in caught.value.detail
    assert (await _spent(engine))["user-day"] == 1100
    assert [f["kind"] async for _, f in ledger.entries(store, "acme")] == ["commit"]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (_adj(5, budget="nope"), "budget"),
        (_adj(5, entity=None), "entity"),
        (_adj(5, budget="org-month", entity="alice"), "entity"),
        (_adj(0), "amount_micros"),
    ],
)
async def test_an_adjustment_that_names_no_counter_is_refused(
    engine: Engine, request_: AdjustmentRequest, field: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await adjust(engine, request_, ADMIN)
    assert caught.value.field == field


async def test_an_adjustment_crossing_a_threshold_emits_it_once(
    engine: Engine, store: ScriptStore
) -> None:
    # user-day for bob: $1 = 1,000,000 µ$, thresholds 50/80/100.
    await adjust(engine, _adj(600_000, entity="bob"), ADMIN)
    await adjust(engine, _adj(-200_000, entity="bob"), ADMIN)
    await adjust(engine, _adj(300_000, entity="bob"), ADMIN)  # 700k: 50 % again, not new
    events = [f for _, f in await store.client.xrange(keys.events("acme"))]
    assert [(e["type"], e["threshold"], e["entity"]) for e in events] == [
        ("threshold", "50", "bob")
    ]


async def test_reconcile_is_exact_through_commits_adjustments_and_a_trim(
    engine: Engine, store: ScriptStore
) -> None:
    await _spend(engine, "r1", 200)
    await adjust(engine, _adj(-400), ADMIN)
    await adjust(engine, _adj(2_500, budget="org-month", entity=None), ADMIN)
    first = await ledger.reconcile(store, "acme")
    assert first.ok and first.entries == 3, first.differences
    now_ms = int((await store.server_time()) * 1000)
    assert await ledger.trim(store, "acme", now_ms + 1) == 3
    await _spend(engine, "r2", 100)
    second = await ledger.reconcile(store, "acme")
    assert second.ok and second.entries == 1, second.differences
    # The conservation check would see a counter moved outside the ledger.
    await store.client.hincrby(keys.counters("acme", "2026-11"), "org-month|acme|s", 1)
    broken = await ledger.reconcile(store, "acme")
    assert [(d.field, d.counter - d.expected) for d in broken.differences] == [("spent", 1)]
