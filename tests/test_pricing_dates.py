"""Dated statuses in the price table: retired models and ended modifiers refuse new
reservations (with the date and the successor); calls made before still price."""

from __future__ import annotations

import datetime as dt
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from budgetd.app import create_app
from budgetd.clock import FrozenClock
from budgetd.pricing import NotOffered, cost, worst_case
from budgetd.pricing_table import load_pricing, parse_pricing
from budgetd.store.connect import embedded_store
from budgetd.usage import Usage
from tests.api.conftest import asgi_client, settings_for, write_policy
from tests.engine.conftest import ACME

SHIPPED = Path(__file__).resolve().parents[1] / "policies" / "pricing.yaml"
TABLE = """
version: "t"
source: "test"
web_search_usd_per_1000: "10"
batch_discount_pct: 50
models:
  - id: old
    family: opus
    deprecated: "2026-01-01"
    retired: "2026-06-01"
    successor: new
    prices:
      - {effective: "2025-01-01", input: "1", output: "2", cache_write_5m: "1", cache_write_1h: "1",
         cache_read: "1",
         fast: {input: "6", output: "12", cache_write_5m: "6", cache_write_1h: "6", cache_read: "6",
                ends: "2026-03-01", successor: "new with speed fast"},
         long_context: {threshold_tokens: 100, input: "2", output: "4", cache_write_5m: "2",
                        cache_write_1h: "2", cache_read: "2", starts: "2025-06-01"}}
"""


def test_a_retired_model_refuses_reservations_with_date_and_successor() -> None:
    table = parse_pricing(TABLE)
    assert worst_case(table, "old", 10, 10, on=dt.date(2026, 5, 31)) == 30
    with pytest.raises(NotOffered) as refused:
        worst_case(table, "old", 10, 10, on=dt.date(2026, 6, 1))
    assert (str(refused.value), refused.value.field) == (
        "model 'old' was retired on 2026-06-01; use new",
        "model",
    )
    model = table.model("old")
    assert [model.status_on(dt.date(2025, 12, 31)), model.status_on(dt.date(2026, 1, 1))] == [
        "active",
        "deprecated",
    ]
    # A call made before the retirement still prices after it.
    late = cost(table, "old", Usage(input_tokens=10), on=dt.date(2026, 7, 1))
    assert late.cost_micros == 10


def test_an_ended_modifier_refuses_reservations_but_still_prices() -> None:
    table = parse_pricing(TABLE)
    assert worst_case(table, "old", 1_000_000, 0, fast=True, on=dt.date(2026, 2, 28)) == 6_000_000
    with pytest.raises(NotOffered) as refused:
        worst_case(table, "old", 10, 10, fast=True, on=dt.date(2026, 3, 1))
    assert refused.value.field == "speed"
    assert str(refused.value) == "fast mode on 'old' ended on 2026-03-01; use new with speed fast"
    fast = cost(table, "old", Usage(input_tokens=1_000_000, speed="fast"), on=dt.date(2026, 3, 2))
    assert (fast.cost_micros, fast.speed) == (6_000_000, "fast")
    with pytest.raises(
        NotOffered, match="long-context band above 100 tokens on 'old' is available"
    ):
        worst_case(table, "old", 101, 0, on=dt.date(2025, 5, 31))


def test_the_shipped_table_carries_this_months_dates() -> None:
    table = load_pricing(SHIPPED)
    today, tomorrow = dt.date(2026, 11, 29), dt.date(2026, 11, 30)
    # Opus 4.8 fast mode ends 2026-11-30 (the API then rejects speed fast).
    assert worst_case(table, "claude-opus-4-8", 10, 10, fast=True, on=today) > 0
    with pytest.raises(NotOffered, match="ended on 2026-11-30; use claude-opus-5-5"):
        worst_case(table, "claude-opus-4-8", 10, 10, fast=True, on=tomorrow)
    # Opus 4.6's fast block ended mid-2026 and is still priced at 6x for calls made before.
    opus46 = table.model("claude-opus-4-6").entry_at(today)
    assert opus46.fast is not None and opus46.fast.input == 6 * opus46.rates.input
    assert opus46.fast_window.ends == dt.date(2026, 6, 27)
    with pytest.raises(NotOffered, match="fast mode on 'claude-opus-4-6' ended on 2026-06-27"):
        worst_case(table, "claude-opus-4-6", 10, 10, fast=True, on=today)
    # Opus 4.5: deprecated since 2026-11-23, retired 2027-01-22.
    opus45 = table.model("claude-opus-4-5")
    assert (opus45.status_on(today), opus45.deprecated, opus45.retired) == (
        "deprecated",
        dt.date(2026, 11, 23),
        dt.date(2027, 1, 22),
    )
    assert worst_case(table, "claude-opus-4-5-20251101", 10, 10, on=today) > 0
    # Sonnet 4.5 retires 2026-11-30.
    assert worst_case(table, "claude-sonnet-4-5", 10, 10, on=today) > 0
    with pytest.raises(NotOffered, match="retired on 2026-11-30; use claude-sonnet-5-5"):
        worst_case(table, "claude-sonnet-4-5", 10, 10, on=tomorrow)


async def test_over_http_reserve_is_refused_commit_and_cost_still_price(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    write_policy(directory, ACME)
    shutil.copy(SHIPPED, directory / "pricing.yaml")
    clock = FrozenClock(datetime(2026, 11, 29, 23, 0, tzinfo=UTC))
    app = create_app(settings_for(directory), store=embedded_store(), clock=clock)
    body = {"org": "acme", "model": "claude-sonnet-4-5", "input_tokens": 100, "max_tokens": 100}
    async with asgi_client(app) as client:
        made = await client.post("/v1/reservations", json={**body, "reservation_id": "before"})
        assert made.status_code == 201
        clock.advance(timedelta(hours=2))  # 2026-11-30: retired
        refused = await client.post("/v1/reservations", json=body)
        assert refused.status_code == 422
        problem = refused.json()
        assert (problem["type"], problem["field"]) == (
            "https://budgetd.dev/problems/retired",
            "model",
        )
        assert "2026-11-30" in problem["detail"] and "claude-sonnet-5-5" in problem["detail"]
        usage = {"usage": {"input_tokens": 100, "output_tokens": 10}}
        committed = await client.post("/v1/reservations/before/commit?org=acme", json=usage)
        assert committed.status_code == 200 and committed.json()["cost_micros"] == 450
        fast = {**body, "model": "claude-opus-4-8", "speed": "fast"}
        ended = await client.post("/v1/reservations", json=fast)
        assert (ended.status_code, ended.json()["field"]) == (422, "speed")
        priced = {"model": "claude-opus-4-8", "usage": {"output_tokens": 1000, "speed": "fast"}}
        today = await client.post("/v1/cost", json=priced)
        old_day = await client.post("/v1/cost", json={**priced, "on": "2026-06-01"})
        assert today.json()["cost_micros"] == old_day.json()["cost_micros"] == 50_000
        before_launch = await client.post(
            "/v1/cost", json={"model": "claude-opus-4-8", "usage": {}, "on": "2026-01-01"}
        )
        assert before_launch.json()["price_effective"] == "2026-05-28"
