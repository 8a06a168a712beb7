"""Reconcile stays exact when period counters expire by design (period end + 8 days) while
their ledger entries stay: those are reported as expired and not compared, and a real
difference in a counter that should still exist is still caught."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from budgetd import ledger
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


async def _charged(store: ScriptStore, rid: str) -> list[str]:
    """The counters (``<hash>#<field>``) the commit of ``rid`` charged."""
    async for _, fields in ledger.entries(store, "acme"):
        if fields["reservation_id"] == rid:
            return sorted(fields["charged"].split())
    raise AssertionError(rid)


async def test_reconcile_skips_counters_expired_by_design_and_catches_real_differences(
    tmp_path: Path, store: ScriptStore
) -> None:
    now = datetime.fromtimestamp(await store.server_time(), UTC)
    clock = FrozenClock(now - timedelta(days=20))  # a period long gone (ended > 8 days ago)
    directory = tmp_path / "policies"
    write_policy(directory, POLICY)
    async with asgi_client(create_app(settings_for(directory), store=store, clock=clock)) as client:
        await _call(client, "old")
        old_counters = await _charged(store, "old")
        assert len(old_counters) == 3  # org-day, user-hour and the rolling sub-bucket
        old_hashes = {c.partition("#")[0] for c in old_counters}
        clock.set(now)
        await _call(client, "new")
        assert not old_hashes & {c.partition("#")[0] for c in await _charged(store, "new")}
        # Time travel: the old period's counter hashes reach their end + 8 days and expire.
        for key in old_hashes:
            await store.client.pexpire(key, 1)
        while any([await store.client.exists(key) for key in old_hashes]):
            pass
        report = await _reconcile(client)
        assert report["ok"], report
        assert sorted(report["report"]["expired"]) == old_counters

        # A real difference in a live counter is still caught ...
        (live,) = [c for c in await _charged(store, "new") if "#org-day|" in c]
        live_hash, _, live_field = live.partition("#")
        await store.client.hincrby(live_hash, live_field, 1)
        report = await _reconcile(client)
        assert not report["ok"]
        assert [d["key"] for d in report["report"]["differences"]] == [live]
        # ... and so is a live counter that is gone before its time.
        await store.client.delete(live_hash)
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
    """What reconcile reads from a counter is what the scripts were told at charge time; a
    counter named the old way (ledger entries from before the layout) reads the same."""
    text = (
        "org: acme\ntimezone: America/New_York\nbudgets:\n"
        f"  - {{name: b, scope: org, limit_usd: 1, period: {period}}}\n"
    )
    policy = parse_policy(text, "acme.yaml", load_pricing(TEST_PRICING))
    spec = policy.budgets[0].period
    made = window(spec, policy.tz, at)
    legacy = keys.legacy_period_counter("acme", "b", "acme", made.charge_id)
    expiry = counter_expiry(policy)
    if spec.calendar:
        counter = keys.charged(keys.counters("acme", made.charge_id), "b|acme|s")
        expected = int(made.expire_at.timestamp() * 1000)
    else:
        # A rolling sub-bucket's hash holds 25 of them: it lives until its last one's expiry.
        index = int(made.charge_id[1:])
        counter = keys.charged(
            keys.rolling_chunk("acme", spec.bucket_s, index), keys.rolling_field("b|acme", index)
        )
        last = window(spec, policy.tz, at + timedelta(seconds=spec.bucket_s * (24 - index % 25)))
        expected = int(last.expire_at.timestamp() * 1000)
    assert expiry(counter) == expected
    assert expiry(legacy) == expected
    assert expiry.current(legacy) == counter
