"""A hold settles in the period it was reserved in, even when the commit comes after rollover."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from budgetd.clock import FrozenClock
from budgetd.contract import CommitRequest, Grant, ReserveRequest
from budgetd.engine import Engine
from budgetd.usage import Usage


async def test_hold_before_midnight_settles_in_its_own_day(
    engine: Engine, clock: FrozenClock
) -> None:
    # 23:59:59 in New York on the 23rd (EST: UTC-5).
    clock.set(datetime(2026, 11, 24, 4, 59, 59, tzinfo=UTC))
    grant = await engine.reserve(
        ReserveRequest(
            org="acme",
            model="claude-haiku-test",
            input_tokens=100,
            max_tokens=100,
            user="bob",
            reservation_id="r1",
            ttl_s=60,
        )
    )
    assert isinstance(grant, Grant)
    clock.advance(timedelta(seconds=2))  # the 24th has begun
    await engine.commit("acme", "r1", CommitRequest(usage=Usage(input_tokens=30)))
    today = await engine.budgets("acme", "bob", None, None)
    day = next(s for s in today.scopes if s.name == "user-day")
    assert (day.spent_micros, day.held_micros) == (0, 0)
    assert day.period_start is not None and day.period_start.day == 24
    clock.advance(timedelta(seconds=-2))
    yesterday = await engine.budgets("acme", "bob", None, None)
    day = next(s for s in yesterday.scopes if s.name == "user-day")
    assert (day.spent_micros, day.held_micros) == (30, 0)


async def test_a_clock_far_behind_redis_does_not_expire_live_counters(
    engine: Engine, clock: FrozenClock
) -> None:
    # Counters expire 8 days after their period ends by the period clock; a clock years behind
    # Redis TIME must not make them expire at once (Redis keeps them at least a day).
    clock.set(datetime(2020, 1, 15, 12, 0, tzinfo=UTC))
    grant = await engine.reserve(
        ReserveRequest(
            org="acme",
            model="claude-haiku-test",
            input_tokens=100,
            max_tokens=100,
            user="bob",
            reservation_id="old",
        )
    )
    assert isinstance(grant, Grant)
    view = await engine.budgets("acme", "bob", None, None)
    assert [s.held_micros for s in view.scopes if s.kind == "budget"] == [600, 600]
