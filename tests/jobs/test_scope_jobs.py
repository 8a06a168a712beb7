"""Spike alerts, forecasts and period-close summaries for team, key and tag budgets (issue 14):
the jobs attribute a ledger entry as the reserve did, from the teams, key and tags it recorded,
with the budget's feature filter and globs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from budgetd.clock import FrozenClock
from budgetd.contract import CommitRequest, Grant, ReserveRequest, UsageRequest
from budgetd.engine import Engine
from budgetd.jobs.forecast import forecast
from budgetd.jobs.period_close import close_periods
from budgetd.jobs.spike import detect_spikes
from budgetd.periods import calendar_bounds
from budgetd.store import keys
from budgetd.store.events import EventQueue
from budgetd.store.scripted import ScriptStore
from budgetd.usage import Usage

POLICY = """
org: acme
timezone: UTC
defaults:
  spike_factor: 3
  spike_min_usd: 0.5
teams:
  platform: {users: [alice]}
  search: {users: [alice, bob]}
budgets:
  - {name: team-day, scope: team, limit_usd: 10, period: day}
  - {name: key-day, scope: key, limit_usd: 10, period: day}
  - {name: project-day, scope: tag, match: "project:*", limit_usd: 10, period: day}
  - {name: code-day, scope: user, feature: claude-code, limit_usd: 10, period: day}
  - {name: run, scope: session, limit_usd: 10, period: session, idle: 30m}
"""
NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture
def setup(
    make_engine: Callable[..., Engine], store: ScriptStore, clock: FrozenClock
) -> tuple[Engine, EventQueue]:
    clock.set(NOON)
    return make_engine(POLICY), EventQueue(store)


async def _as_written(engine: Engine) -> dict[str, str]:
    """The fields the engine writes for alice's call with a key and tags (then removed, so the
    tests place copies of it in time)."""
    await engine.record(
        UsageRequest(
            org="acme",
            model="claude-haiku-test",
            usage=Usage(input_tokens=1),
            user="alice",
            feature="chat",
            tags=["project:search", "env:prod"],
            session="run-1",
        ),
        key="search-app",
    )
    store = engine.store
    assert isinstance(store, ScriptStore)
    [(_, fields)] = await store.client.xrange(keys.ledger("acme"))
    await store.client.delete(keys.ledger("acme"))
    return dict(fields)


async def _at(store: ScriptStore, fields: dict[str, str], at: datetime, cost: int) -> None:
    await store.client.xadd(
        keys.ledger("acme"),
        {**fields, "cost_micros": str(cost)},
        id=f"{int(at.timestamp() * 1000)}-*",
    )


async def _events(store: ScriptStore, kind: str) -> list[tuple[str, str, str]]:
    rows = await store.client.xrange(keys.events("acme"))
    return sorted((f["budget"], f["scope"], f["entity"]) for _, f in rows if f["type"] == kind)


async def test_spikes_of_team_key_and_tag_budgets(
    setup: tuple[Engine, EventQueue], store: ScriptStore
) -> None:
    engine, queue = setup
    alice = await _as_written(engine)
    for hour in range(24, 0, -1):
        await _at(store, alice, NOON - timedelta(hours=hour, minutes=30), 500_000)
    await _at(store, alice, NOON - timedelta(minutes=10), 5_000_000)
    assert await detect_spikes(engine, queue, "acme", NOON) == 4
    # Each of alice's teams, her key and her one project tag; not code-day (her feature is
    # chat), not env:prod (project-day matches project:*), and not her session's budget (a
    # run has too few hours for a baseline).
    assert await _events(store, "spike") == [
        ("key-day", "key", "search-app"),
        ("project-day", "tag", "project:search"),
        ("team-day", "team", "platform"),
        ("team-day", "team", "search"),
    ]


async def test_forecast_of_a_team_budget(
    setup: tuple[Engine, EventQueue], store: ScriptStore
) -> None:
    engine, queue = setup
    alice = await _as_written(engine)
    for minute in range(0, 60, 15):  # $0.50 over the last hour
        await _at(store, alice, NOON - timedelta(minutes=60 - minute - 1), 125_000)
    period_id, _, _ = calendar_bounds("day", engine.policy("acme").tz, NOON)
    await store.client.hset(keys.counters("acme", period_id), "team-day|platform|s", "6000000")
    # $6 of $10 by noon at $0.50 an hour runs out at 20:00; every other counter has room.
    assert await forecast(engine, queue, "acme", NOON) == 1
    assert await _events(store, "forecast") == [("team-day", "team", "platform")]


async def test_period_close_ranks_teams_keys_and_tags(
    setup: tuple[Engine, EventQueue], store: ScriptStore
) -> None:
    engine, queue = setup
    alice = await _as_written(engine)
    bob = {**alice, "user": "bob", "teams": "search", "tags": "project:chat"}
    bob.pop("key")
    await _at(store, alice, NOON - timedelta(hours=3), 3_000)
    await _at(store, bob, NOON - timedelta(hours=2), 2_000)
    midnight = NOON + timedelta(hours=12)
    assert await close_periods(engine, queue, "acme", "day", midnight) == 4
    rows = await store.client.xrange(keys.events("acme"))
    closes = {f["budget"]: f for _, f in rows if f["type"] == "period_close"}
    assert closes["team-day"]["top_entities"] == '[["search",5000],["platform",3000]]'
    assert closes["team-day"]["used_micros"] == "5000"
    assert closes["key-day"]["top_entities"] == '[["search-app",3000]]'
    assert closes["project-day"]["top_entities"] == (
        '[["project:search",3000],["project:chat",2000]]'
    )
    assert closes["code-day"]["used_micros"] == "0"


async def test_threshold_events_name_the_team_key_and_tag(
    setup: tuple[Engine, EventQueue], store: ScriptStore
) -> None:
    engine, _ = setup
    # $6 held of each $10 budget (the test table's haiku: $1 per million input tokens).
    request = ReserveRequest(
        org="acme",
        model="claude-haiku-test",
        input_tokens=6_000_000,
        max_tokens=1,
        user="bob",
        tags=["project:search"],
        reservation_id="r1",
    )
    assert isinstance(await engine.reserve(request, key="search-app"), Grant)
    await engine.commit(
        "acme", "r1", CommitRequest(usage=Usage(input_tokens=6_000_000)), key="search-app"
    )
    assert await _events(store, "threshold") == [
        ("key-day", "key", "search-app"),
        ("project-day", "tag", "project:search"),
        ("team-day", "team", "search"),
    ]
