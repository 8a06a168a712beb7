"""No rolling window of the stated length ever holds more than its limit in committed spend
(issue 9, item 4). A commit used to charge the sub-bucket in force when the hold was reserved:
a hold reserved at t0 and committed at t0+59m aged out of the window at t0+1h, so a second $1
at t0+62m40s made $2 within 3m40s under a $1 per rolling hour budget."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from budgetd.clock import FrozenClock
from budgetd.store.base import Store
from tests.api.conftest import ClientFactory

HOURLY = """
org: acme
timezone: UTC
defaults: {hold_ttl_s: 3600}
budgets:
  - {name: hourly, scope: org, limit_usd: 1, period: 1h}
"""
# claude-haiku-test: $5 per million output tokens, so 200,000 output tokens are exactly $1.
DOLLAR = {"org": "acme", "model": "claude-haiku-test", "input_tokens": 0, "max_tokens": 200_000}
USAGE = {"usage": {"input_tokens": 0, "output_tokens": 200_000}}


async def test_the_issues_scenario_spends_at_most_the_limit_per_rolling_hour(
    client_for: ClientFactory, store: Store
) -> None:
    t0 = datetime(2026, 11, 23, 15, 0, 10, tzinfo=UTC)
    clock = FrozenClock(t0)
    async with client_for(HOURLY, store=store, clock=clock) as client:
        first = await client.post("/v1/reservations", json=DOLLAR)
        assert first.status_code == 201, first.text
        assert first.json()["held_micros"] == 1_000_000
        rid = first.json()["reservation_id"]

        clock.set(t0 + timedelta(minutes=59))
        commit = await client.post(
            f"/v1/reservations/{rid}/commit", params={"org": "acme"}, json=USAGE
        )
        assert commit.status_code == 200, commit.text
        assert (commit.json()["cost_micros"], commit.json()["overrun"]) == (1_000_000, False)

        # 3m40s later: the $1 committed at t0+59m is inside the last hour.
        clock.set(t0 + timedelta(minutes=62, seconds=40))
        second = await client.post("/v1/reservations", json=DOLLAR)
        assert second.status_code == 429, second.text
        (scope,) = second.json()["scopes"]
        assert (scope["name"], scope["spent_micros"]) == ("hourly", 1_000_000)

        # Once the commit has left every window that contains it, the room is back.
        clock.set(t0 + timedelta(minutes=59 + 60, seconds=150))
        third = await client.post("/v1/reservations", json=DOLLAR)
        assert third.status_code == 201, third.text
