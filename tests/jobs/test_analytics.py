"""Period close, burn-rate forecast and spike alerts: once for a curve built to cross them, and
never for one built to stay below."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger

from budgetd.clock import FrozenClock
from budgetd.engine import Engine
from budgetd.jobs.forecast import forecast
from budgetd.jobs.period_close import close_periods
from budgetd.jobs.scheduler import CRON_OF
from budgetd.jobs.spike import detect_spikes
from budgetd.periods import calendar_bounds
from budgetd.store import keys
from budgetd.store.events import EventQueue
from budgetd.store.scripted import ScriptStore

NY = ZoneInfo("America/New_York")
POLICY = """
org: acme
timezone: America/New_York
defaults:
  spike_factor: 3
  spike_min_usd: 0.5
budgets:
  - {name: org-day, scope: org, limit_usd: 10, period: day}
  - {name: user-day, scope: user, limit_usd: 5, period: day, forecast: false}
"""
NOON = datetime(2026, 11, 23, 17, 0, tzinfo=UTC)  # 12:00 in New York


@pytest.fixture
def setup(
    make_engine: Callable[..., Engine], store: ScriptStore, clock: FrozenClock
) -> tuple[Engine, EventQueue]:
    clock.set(NOON)
    return make_engine(POLICY), EventQueue(store)


async def _ledger(store: ScriptStore, at: datetime, cost: int, user: str = "bob") -> None:
    """A settled entry at ``at`` (explicit stream id: the ledger's time is its id)."""
    await store.client.xadd(
        keys.ledger("acme"),
        {
            "kind": "record",
            "cost_micros": str(cost),
            "user": user,
            "feature": "chat",
            "model": "claude-haiku-test",
            "overrun": "0",
        },
        id=f"{int(at.timestamp() * 1000)}-*",
    )


async def _events(store: ScriptStore, kind: str) -> list[dict[str, str]]:
    rows = await store.client.xrange(keys.events("acme"))
    return [fields for _, fields in rows if fields["type"] == kind]


async def _set_spent(store: ScriptStore, micros: int) -> None:
    period_id, _, _ = calendar_bounds("day", NY, NOON)
    await store.client.hset(keys.counters("acme", period_id), "org-day|acme|s", str(micros))


@pytest.mark.parametrize(("last_hour", "expected"), [(1_000_000, 1), (100_000, 0)])
async def test_forecast_fires_once_when_the_rate_would_cross(
    setup: tuple[Engine, EventQueue], store: ScriptStore, last_hour: int, expected: int
) -> None:
    engine, queue = setup
    await _set_spent(store, 6_000_000)  # $6 of $10 by noon
    for minute in range(0, 60, 15):  # spread over the last hour
        await _ledger(store, NOON - timedelta(minutes=60 - minute - 1), last_hour // 4)
    assert await forecast(engine, queue, "acme", NOON) == expected
    assert await forecast(engine, queue, "acme", NOON + timedelta(minutes=5)) == 0
    found = await _events(store, "forecast")
    assert len(found) == expected
    if expected:
        # $4 left at $1/hour: runs out at 16:00 New York time.
        assert found[0]["runs_out_at"] == "2026-11-23T21:00:00+00:00"
        assert "16:00 America/New_York" in found[0]["summary"]
        assert found[0]["budget"] == "org-day"  # user-day has forecast: false


@pytest.mark.parametrize(("current", "expected"), [(5_000_000, 2), (1_000_000, 0)])
async def test_spike_fires_once_above_k_times_the_trailing_average(
    setup: tuple[Engine, EventQueue], store: ScriptStore, current: int, expected: int
) -> None:
    engine, queue = setup
    for hour in range(24, 0, -1):  # $0.50 in each of the 24 hours before the last one
        await _ledger(store, NOON - timedelta(hours=hour, minutes=30), 500_000)
    await _ledger(store, NOON - timedelta(minutes=10), current)
    assert await detect_spikes(engine, queue, "acme", NOON) == expected
    assert await detect_spikes(engine, queue, "acme", NOON + timedelta(minutes=5)) == 0
    # One for the org budget and one for bob's user budget, each once.
    assert sorted(e["budget"] for e in await _events(store, "spike")) == (
        ["org-day", "user-day"] if expected else []
    )


async def test_period_close_fires_once_at_local_midnight_across_dst(
    setup: tuple[Engine, EventQueue], store: ScriptStore
) -> None:
    engine, queue = setup
    trigger = CronTrigger(timezone=NY, **CRON_OF["day"])
    before_dst_end = datetime(2026, 10, 31, 16, 0, tzinfo=UTC)
    first = trigger.get_next_fire_time(None, before_dst_end)
    second = trigger.get_next_fire_time(first, first + timedelta(seconds=1))
    assert first is not None and second is not None
    assert first.astimezone(UTC) == datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # 00:00 EDT
    assert second.astimezone(UTC) == datetime(2026, 11, 2, 5, 0, tzinfo=UTC)  # 00:00 EST
    # The day of the change (25 hours) closes once, however many replicas run the job.
    await _ledger(store, datetime(2026, 11, 1, 12, 0, tzinfo=UTC), 1_234)
    fired = second.astimezone(UTC)
    assert await close_periods(engine, queue, "acme", "day", fired) == 2
    assert await close_periods(engine, queue, "acme", "day", fired) == 0
    closes = {e["budget"]: e for e in await _events(store, "period_close")}
    assert closes["user-day"]["period"] == "2026-11-01"
    assert closes["user-day"]["used_micros"] == "1234"
    assert '["bob",1234]' in closes["user-day"]["top_entities"]
