"""Reconcile stays exact when period counters expire by design (period end + 8 days) while
their ledger entries stay: those are reported as expired and not compared, and a real
difference in a counter that should still exist is still caught."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from budgetd.app import create_app
from budgetd.clock import FrozenClock
from budgetd.expiry import counter_expiry
from budgetd.periods import window
from budgetd.policy.loader import parse_policy
from budgetd.pricing_table import load_pricing
from budgetd.store import keys
from budgetd.store.scripted import ScriptStore
from tests.api.conftest import Client, asgi_client, settings_for, write_policy
from tests.conftest import TEST_PRICING

POLICY = """
org: acme
timezone: America/New_York
budgets:
  - {name: org-day, scope: org, limit_usd: 100, period: day}
  - {name: user-hour, scope: user, limit_usd: 10, period: hour}
  - {name: org-rolling, scope: org, limit_usd: 100, period: 1h}
"""


async def _call(client: Client, rid: str) -> None:
    body = {
        "org": "acme",
        "user": "alice",
        "model": "claude-haiku-test",
        "input_tokens": 100,
        "max_tokens": 10,
        "reservation_id": rid,
    }
    assert (await client.post("/v1/reservations", json=body)).status_code == 201
    usage = {"usage": {"input_tokens": 90, "output_tokens": 5}}
    done = await client.post(f"/v1/reservations/{rid}/commit?org=acme", json=usage)
    assert done.status_code == 200, done.text


async def _reconcile(client: Client) -> dict[str, Any]:
    answer = await client.get("/v1/admin/reconcile?org=acme")
    assert answer.status_code == 200, answer.text
    report: dict[str, Any] = answer.json()
    return report


async def test_reconcile_skips_counters_expired_by_design_and_catches_real_differences(
    tmp_path: Path, store: ScriptStore
) -> None:
    now = datetime.fromtimestamp(await store.server_time(), UTC)
    clock = FrozenClock(now - timedelta(days=20))  # a period long gone (ended > 8 days ago)
    directory = tmp_path / "policies"
    write_policy(directory, POLICY)
    async with asgi_client(create_app(settings_for(directory), store=store, clock=clock)) as client:
        await _call(client, "old")
        old_counters = [key async for key in store.client.scan_iter(match="bd:{o:acme}:b:*")]
        clock.set(now)
        await _call(client, "new")
        # Time travel: the old period's counters reach their end + 8 days and expire.
        for key in old_counters:
            await store.client.pexpire(key, 1)
        while any([await store.client.exists(key) for key in old_counters]):
            pass
        report = await _reconcile(client)
        assert report["ok"], report
        assert sorted(report["report"]["expired"]) == sorted(old_counters)
        assert len(old_counters) == 3  # org-day, user-hour and the rolling sub-bucket

        # A real difference in a live counter is still caught ...
        (live,) = [
            key
            async for key in store.client.scan_iter(match="bd:{o:acme}:b:org-day:*")
            if key not in old_counters
        ]
        await store.client.hincrby(live, "spent", 1)
        report = await _reconcile(client)
        assert not report["ok"]
        assert [d["key"] for d in report["report"]["differences"]] == [live]
        # ... and so is a live counter that is gone before its time.
        await store.client.delete(live)
        report = await _reconcile(client)
        assert [(d["key"], d["counter"]) for d in report["report"]["differences"]] == [(live, 0)]


@pytest.mark.parametrize("period", ["hour", "day", "week", "month", "6h"])
@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC),  # 01:30 EDT, the repeated hour's first pass
        datetime(2026, 11, 1, 6, 30, tzinfo=UTC),  # 01:30 EST, its second
        datetime(2026, 12, 31, 23, 59, tzinfo=UTC),
        datetime(2027, 3, 14, 7, 0, tzinfo=UTC),  # 03:00 EDT, just after the skipped hour
    ],
)
def test_a_counters_expiry_by_design_is_its_windows_expiry(period: str, at: datetime) -> None:
    """What reconcile reads from a key is what the scripts were told at charge time."""
    text = (
        "org: acme\ntimezone: America/New_York\nbudgets:\n"
        f"  - {{name: b, scope: org, limit_usd: 1, period: {period}}}\n"
    )
    policy = parse_policy(text, "acme.yaml", load_pricing(TEST_PRICING))
    spec = policy.budgets[0].period
    made = window(spec, policy.tz, at)
    key = keys.period_counter("acme", "b", "acme", made.charge_id)
    assert counter_expiry(policy)(key) == int(made.expire_at.timestamp() * 1000)
