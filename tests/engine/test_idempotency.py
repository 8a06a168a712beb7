"""A reservation resolves exactly once, whatever races between commit, release and expiry."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from budgetd.contract import CommitRequest, Denied, Grant
from budgetd.engine import Engine
from budgetd.errors import BudgetdError, Conflict
from budgetd.store import keys
from budgetd.store.scripted import ScriptStore
from budgetd.usage import Usage
from tests.engine.conftest import HAIKU
from tests.engine.conftest import reserve_request as req


async def _budget_totals(engine: Engine) -> list[tuple[int | None, int | None]]:
    view = await engine.budgets("acme", "bob", "chat", None)
    return [(s.spent_micros, s.held_micros) for s in view.scopes if s.kind == "budget"]


async def test_same_id_same_request_replays_even_when_budget_filled(engine: Engine) -> None:
    first = await engine.reserve(req("r1", max_tokens=99_000))  # 495,100 µ$ of bob's $1
    assert isinstance(first, Grant)
    assert isinstance(await engine.reserve(req("r2", max_tokens=99_000)), Grant)
    assert isinstance(await engine.reserve(req("r3", max_tokens=99_000)), Denied)
    replay = await engine.reserve(req("r1", max_tokens=99_000))  # no room left, still replays
    assert isinstance(replay, Grant)
    assert replay.replayed
    assert (replay.held_micros, replay.expires_at) == (first.held_micros, first.expires_at)
    assert replay.scopes == first.scopes


async def test_same_id_different_request_conflicts(engine: Engine) -> None:
    await engine.reserve(req("r1"))
    with pytest.raises(Conflict):
        await engine.reserve(req("r1", max_tokens=101))


async def test_commit_replay_and_conflict(engine: Engine) -> None:
    await engine.reserve(req("r1"))
    body = CommitRequest(usage=Usage(input_tokens=10, output_tokens=10))
    results = [await engine.commit("acme", "r1", body) for _ in range(3)]
    assert [r.replayed for r in results] == [False, True, True]
    assert len({(r.cost_micros, r.ledger_id) for r in results}) == 1
    with pytest.raises(Conflict):
        await engine.commit("acme", "r1", CommitRequest(usage=Usage(input_tokens=11)))
    assert await _budget_totals(engine) == [(60, 0)] * 3


async def test_commit_after_release_is_a_conflict(engine: Engine) -> None:
    await engine.reserve(req("r1"))
    await engine.release("acme", "r1")
    with pytest.raises(Conflict) as caught:
        await engine.commit("acme", "r1", CommitRequest(usage=Usage(input_tokens=1)))
    assert caught.value.state == "released"


async def test_races_resolve_each_reservation_once(engine: Engine, store: ScriptStore) -> None:
    """Commits retried 3×, releases and the expiry sweep race on 40 reservations at once."""
    n = 40
    for i in range(n):
        assert isinstance(await engine.reserve(req(f"r{i}", ttl_s=1)), Grant)

    async def contend(i: int) -> None:
        body = CommitRequest(usage=Usage(input_tokens=7, output_tokens=3))  # 22 µ$
        calls = [engine.commit("acme", f"r{i}", body) for _ in range(3)]
        calls += [engine.release("acme", f"r{i}") for _ in range(2)]
        calls.append(engine.expire("acme"))  # type: ignore[arg-type]
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, BaseException):
                assert isinstance(outcome, Conflict), outcome

    await asyncio.gather(*(contend(i) for i in range(n)))
    states = [await store.reservation("acme", f"r{i}") for i in range(n)]
    committed = sum(1 for s in states if s is not None and s.state == "committed")
    assert all(s is not None and s.state in ("committed", "released") for s in states)
    entries = await store.client.xrange(keys.ledger("acme"))
    assert len(entries) == committed
    assert len({e[1]["reservation_id"] for e in entries}) == committed
    assert await _budget_totals(engine) == [(22 * committed, 0)] * 3


async def test_unknown_reservation_is_not_found(engine: Engine) -> None:
    with contextlib.suppress(BudgetdError):
        await engine.release("acme", "nope")
    with pytest.raises(BudgetdError) as caught:
        await engine.commit("acme", "nope", CommitRequest(usage=Usage(), model=HAIKU))
    assert caught.value.status == 404
