"""Leases measured on Redis time: abandoned holds are reclaimed; late commits still count."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from budgetd.contract import CommitRequest, Grant, ReserveRequest
from budgetd.engine import Engine
from budgetd.errors import Conflict
from budgetd.jobs.sweep import sweep_expired
from budgetd.store import keys
from budgetd.store.scripted import ScriptStore
from budgetd.usage import Usage
from tests.engine.conftest import HAIKU, reserve_request


def req(rid: str, ttl_s: int = 1) -> ReserveRequest:
    return reserve_request(rid, ttl_s=ttl_s)


async def _held(engine: Engine) -> list[int | None]:
    view = await engine.budgets("acme", "bob", "chat", None)
    return [s.held_micros for s in view.scopes if s.kind == "budget"]


async def _until_swept(engine: Engine, deadline_s: float = 5.0) -> int:
    """Run the sweep until it reclaims something (the lease runs on Redis time)."""
    end = time.monotonic() + deadline_s
    total = 0
    while time.monotonic() < end:
        total += await sweep_expired(engine)
        if total:
            return total
        await asyncio.sleep(0.1)
    return total


async def test_the_sweep_reclaims_many_holds_in_small_scripts(
    engine: Engine, store: ScriptStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica that dies with thousands of holds open leaves them to the sweep. It expired
    1,000 a script (~35 ms of Redis, in which no reserve or commit of any org ran:
    docs/performance.md, "Job stalls"); now ``SWEEP_BATCH`` (100) a script, each one deciding
    every hold it frees before its first write, as before."""
    for i in range(250):
        assert isinstance(await engine.reserve(req(f"crowd{i}")), Grant)
    reclaimed: list[int] = []
    expire = store.expire

    async def counted(org: str, limit: int) -> tuple[int, int]:
        done = await expire(org, limit)
        reclaimed.append(done[0])
        return done

    monkeypatch.setattr(store, "expire", counted)
    await asyncio.sleep(1.3)  # every 1 s lease (Redis time) ran out
    assert await sweep_expired(engine) == 250
    assert max(reclaimed) <= 100 and sum(reclaimed) == 250
    assert await _held(engine) == [0, 0, 0]


async def test_abandoned_hold_is_reclaimed_by_the_sweep(engine: Engine, store: ScriptStore) -> None:
    assert isinstance(await engine.reserve(req("r1")), Grant)
    assert await _held(engine) == [600, 600, 600]
    assert await _until_swept(engine) == 1
    assert await _held(engine) == [0, 0, 0]
    view = await store.reservation("acme", "r1")
    assert view is not None and view.state == "expired"
    assert await store.client.zcard(keys.holds("acme")) == 0


async def test_late_commit_records_spend_as_overrun(engine: Engine, store: ScriptStore) -> None:
    assert isinstance(await engine.reserve(req("r1")), Grant)
    await _until_swept(engine)
    result = await engine.commit(
        "acme", "r1", CommitRequest(usage=Usage(input_tokens=50, output_tokens=10))
    )
    assert (result.cost_micros, result.overrun, result.late) == (100, True, True)
    view = await engine.budgets("acme", "bob", "chat", None)
    assert [(s.spent_micros, s.held_micros) for s in view.scopes if s.kind == "budget"] == [
        (100, 0)
    ] * 3
    entry = (await store.client.xrange(keys.ledger("acme")))[-1][1]
    assert (entry["overrun"], entry["late"], entry["cost_micros"]) == ("1", "1", "100")


async def test_commit_past_lease_before_sweep_is_late_too(engine: Engine) -> None:
    assert isinstance(await engine.reserve(req("r1")), Grant)
    await asyncio.sleep(1.1)  # the lease is on Redis time: real time must pass
    result = await engine.commit("acme", "r1", CommitRequest(usage=Usage(input_tokens=1)))
    assert (result.overrun, result.late, result.released_micros) == (True, True, 0)
    assert await _held(engine) == [0, 0, 0]


async def test_lazy_expiry_on_reserve_frees_stale_holds(engine: Engine) -> None:
    # bob has $1; a stale hold of 0.9 $ must not deny a fresh 0.5 $ once its lease ran out.
    stale = ReserveRequest(
        org="acme",
        model=HAIKU,
        input_tokens=0,
        max_tokens=180_000,
        user="bob",
        reservation_id="stale",
        ttl_s=1,
    )
    assert isinstance(await engine.reserve(stale), Grant)
    await asyncio.sleep(1.1)
    fresh = ReserveRequest(
        org="acme",
        model=HAIKU,
        input_tokens=0,
        max_tokens=100_000,
        user="bob",
        reservation_id="fresh",
    )
    assert isinstance(await engine.reserve(fresh), Grant)


async def test_overrun_commit_beyond_hold_is_flagged(engine: Engine) -> None:
    assert isinstance(await engine.reserve(req("r1", ttl_s=60)), Grant)
    result = await engine.commit(
        "acme", "r1", CommitRequest(usage=Usage(input_tokens=100, output_tokens=200))
    )  # 1,100 µ$ > 600 µ$ held
    assert (result.cost_micros, result.overrun, result.late) == (1_100, True, False)


async def test_a_conflict_reports_the_state_after_its_own_lazy_expiry(engine: Engine) -> None:
    """Found by the model-based test: the same id with another body after the lease ran out is
    a conflict, and it must name the state the call itself left (``expired``: its lazy expiry
    just reclaimed the hold), not the state it read before that (``held``)."""
    assert isinstance(await engine.reserve(req("r1")), Grant)
    await asyncio.sleep(1.1)  # the lease is on Redis time: real time must pass
    other_body = msgspec.structs.replace(req("r1"), max_tokens=200)
    with pytest.raises(Conflict) as conflict:
        await engine.reserve(other_body)
    assert conflict.value.state == "expired"
    assert await _held(engine) == [0, 0, 0]
