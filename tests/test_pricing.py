"""Cost of a call and worst case of a hold, against the fixed table in tests/data/pricing.yaml.

Every expected value is worked out by hand from that table (USD per million tokens → micros):
n tokens at $r/MTok cost n·r micro-dollars.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import msgspec
import pytest

from budgetd.pricing import CostLine, PricingError, cost, worst_case
from budgetd.pricing_table import (
    PricingFileError,
    PricingTable,
    UnknownModelError,
    load_pricing,
    parse_pricing,
)
from budgetd.usage import Usage

TEST_PRICING = Path(__file__).parent / "data" / "pricing.yaml"


@pytest.fixture(scope="module")
def table() -> PricingTable:
    return load_pricing(TEST_PRICING)


def usage(**fields: Any) -> Usage:
    return msgspec.convert(fields, Usage)


def cache(five: int = 0, hour: int = 0) -> dict[str, int]:
    return {"ephemeral_5m_input_tokens": five, "ephemeral_1h_input_tokens": hour}


# (model, usage fields, micros). 1,000 tokens of each kind alone, per family.
PER_KIND = [
    # opus-test: 5 / 25 / 6.25 / 10 / 0.50
    ("claude-opus-test", {"input_tokens": 1000}, 5_000),
    ("claude-opus-test", {"output_tokens": 1000}, 25_000),
    ("claude-opus-test", {"cache_creation_input_tokens": 1000}, 6_250),
    (
        "claude-opus-test",
        {"cache_creation_input_tokens": 1000, "cache_creation": cache(hour=1000)},
        10_000,
    ),
    ("claude-opus-test", {"cache_read_input_tokens": 1000}, 500),
    # sonnet-test, newest entry (2026-10-01): 3 / 15 / 3.75 / 6 / 0.15
    ("claude-sonnet-test", {"input_tokens": 1000}, 3_000),
    ("claude-sonnet-test", {"output_tokens": 1000}, 15_000),
    ("claude-sonnet-test", {"cache_creation_input_tokens": 1000}, 3_750),
    (
        "claude-sonnet-test",
        {"cache_creation_input_tokens": 1000, "cache_creation": cache(hour=1000)},
        6_000,
    ),
    ("claude-sonnet-test", {"cache_read_input_tokens": 1000}, 150),
    # haiku-test: 1 / 5 / 1.25 / 2 / 0.10
    ("claude-haiku-test", {"input_tokens": 1000}, 1_000),
    ("claude-haiku-test", {"output_tokens": 1000}, 5_000),
    ("claude-haiku-test", {"cache_creation_input_tokens": 1000}, 1_250),
    (
        "claude-haiku-test",
        {"cache_creation_input_tokens": 1000, "cache_creation": cache(hour=1000)},
        2_000,
    ),
    ("claude-haiku-test", {"cache_read_input_tokens": 1000}, 100),
]


@pytest.mark.parametrize(("model", "fields", "micros"), PER_KIND)
def test_each_token_kind_on_each_family(
    table: PricingTable, model: str, fields: dict[str, Any], micros: int
) -> None:
    assert cost(table, model, usage(**fields)).cost_micros == micros


def test_all_kinds_together_with_breakdown(table: PricingTable) -> None:
    result = cost(
        table,
        "claude-opus-test",
        usage(
            input_tokens=1000,
            output_tokens=2000,
            cache_creation_input_tokens=3000,
            cache_creation=cache(five=1000, hour=2000),
            cache_read_input_tokens=4000,
            server_tool_use={"web_search_requests": 3},
        ),
    )
    # 1000·5 + 2000·25 + 1000·6.25 + 2000·10 + 4000·0.5 + 3 searches · $0.01
    assert result.cost_micros == 5_000 + 50_000 + 6_250 + 20_000 + 2_000 + 30_000
    assert result.lines == (
        CostLine(kind="input", quantity=1000, picos=5_000_000_000),
        CostLine(kind="output", quantity=2000, picos=50_000_000_000),
        CostLine(kind="cache_write_5m", quantity=1000, picos=6_250_000_000),
        CostLine(kind="cache_write_1h", quantity=2000, picos=20_000_000_000),
        CostLine(kind="cache_read", quantity=4000, picos=2_000_000_000),
        CostLine(kind="web_search", quantity=3, picos=30_000_000_000),
    )
    assert result.model == "claude-opus-test"
    assert result.pricing_version == "test-1"
    assert result.price_effective == dt.date(2026, 1, 1)
    assert (result.band, result.speed, result.batch, result.us_inference) == (
        "standard",
        "standard",
        False,
        False,
    )


def test_input_tokens_are_not_reduced_by_cache_tokens(table: PricingTable) -> None:
    # Anthropic's input_tokens already excludes cached tokens: all three are billed in full.
    result = cost(
        table,
        "claude-haiku-test",
        usage(input_tokens=100, cache_creation_input_tokens=100, cache_read_input_tokens=100),
    )
    assert result.cost_micros == 100 + 125 + 10


def test_web_search_is_ten_dollars_per_thousand(table: PricingTable) -> None:
    result = cost(table, "claude-haiku-test", usage(server_tool_use={"web_search_requests": 1}))
    assert result.cost_micros == 10_000


# ---- long context (sonnet-test: above 200,000 prompt tokens, 6 / 22.50 / 7.50 / 12 / 0.30) ----


def test_long_context_at_threshold_is_standard(table: PricingTable) -> None:
    result = cost(table, "claude-sonnet-test", usage(input_tokens=200_000, output_tokens=1000))
    assert result.band == "standard"
    assert result.cost_micros == 200_000 * 3 + 15_000


def test_long_context_one_token_over_threshold_prices_everything_higher(
    table: PricingTable,
) -> None:
    result = cost(table, "claude-sonnet-test", usage(input_tokens=200_001, output_tokens=1000))
    assert result.band == "long_context"
    assert result.cost_micros == 200_001 * 6 + 22_500


def test_cache_reads_and_writes_count_toward_the_long_context_threshold(
    table: PricingTable,
) -> None:
    below = usage(
        input_tokens=100_000, cache_read_input_tokens=50_000, cache_creation_input_tokens=50_000
    )
    assert cost(table, "claude-sonnet-test", below).band == "standard"
    assert cost(table, "claude-sonnet-test", below).cost_micros == 300_000 + 7_500 + 187_500

    above = usage(
        input_tokens=100_000, cache_read_input_tokens=50_000, cache_creation_input_tokens=50_001
    )
    result = cost(table, "claude-sonnet-test", above)
    assert result.band == "long_context"
    # 100,000·6 + 50,000·0.30 + 50,001·7.50 = 600,000 + 15,000 + 375,007.5 → rounded up once
    assert result.cost_micros == 990_008


def test_output_does_not_count_toward_the_threshold(table: PricingTable) -> None:
    result = cost(table, "claude-sonnet-test", usage(input_tokens=1000, output_tokens=300_000))
    assert result.band == "standard"
    assert result.cost_micros == 3_000 + 300_000 * 15


def test_model_without_long_context_band_never_switches(table: PricingTable) -> None:
    result = cost(table, "claude-haiku-test", usage(input_tokens=1_000_000))
    assert result.band == "standard"
    assert result.cost_micros == 1_000_000


# ---- serving modifiers ----


def test_batch_via_flag_halves_the_cost(table: PricingTable) -> None:
    result = cost(
        table, "claude-opus-test", usage(input_tokens=1000, output_tokens=1000), batch=True
    )
    assert result.batch is True
    assert result.cost_micros == 15_000


def test_batch_via_service_tier(table: PricingTable) -> None:
    result = cost(
        table,
        "claude-opus-test",
        usage(input_tokens=1000, output_tokens=1000, service_tier="batch"),
    )
    assert result.batch is True
    assert result.cost_micros == 15_000


def test_batch_discount_applies_to_cache_kinds_and_rounds_up(table: PricingTable) -> None:
    # 1 input token on opus = 5 micros; half of it is 2.5 → 3.
    assert cost(table, "claude-opus-test", usage(input_tokens=1), batch=True).cost_micros == 3
    result = cost(
        table,
        "claude-haiku-test",
        usage(cache_creation_input_tokens=1000, cache_read_input_tokens=1000),
        batch=True,
    )
    assert result.cost_micros == (1_250 + 100) // 2


def test_standard_service_tier_is_not_batch(table: PricingTable) -> None:
    result = cost(table, "claude-opus-test", usage(input_tokens=1000, service_tier="standard"))
    assert result.batch is False
    assert result.cost_micros == 5_000


def test_us_inference_multiplies_every_token(table: PricingTable) -> None:
    result = cost(
        table,
        "claude-opus-test",
        usage(
            input_tokens=1000,
            output_tokens=1000,
            cache_creation_input_tokens=1000,
            cache_read_input_tokens=1000,
            inference_geo="us",
        ),
    )
    assert result.us_inference is True
    assert result.cost_micros == (5_000 + 25_000 + 6_250 + 500) * 11 // 10


def test_us_inference_with_batch(table: PricingTable) -> None:
    result = cost(
        table,
        "claude-opus-test",
        usage(input_tokens=1000, output_tokens=1000, inference_geo="us", service_tier="batch"),
    )
    assert result.cost_micros == 16_500


def test_us_inference_on_a_model_without_multiplier_is_unchanged(table: PricingTable) -> None:
    result = cost(table, "claude-haiku-test", usage(input_tokens=1000, inference_geo="us"))
    assert result.us_inference is False
    assert result.cost_micros == 1_000


def test_global_geo_is_not_us(table: PricingTable) -> None:
    result = cost(table, "claude-opus-test", usage(input_tokens=1000, inference_geo="global"))
    assert result.cost_micros == 5_000


def test_fast_mode_uses_fast_rates(table: PricingTable) -> None:
    # opus-test fast: 30 / 150 / 37.50 / 60 / 3
    result = cost(
        table,
        "claude-opus-test",
        usage(
            input_tokens=1000,
            output_tokens=1000,
            cache_creation_input_tokens=2000,
            cache_creation=cache(five=1000, hour=1000),
            cache_read_input_tokens=1000,
            speed="fast",
        ),
    )
    assert result.speed == "fast"
    assert result.cost_micros == 30_000 + 150_000 + 37_500 + 60_000 + 3_000


def test_fast_mode_on_a_model_without_fast_rates_is_an_error(table: PricingTable) -> None:
    with pytest.raises(PricingError, match="'claude-sonnet-test' has no fast-mode price"):
        cost(table, "claude-sonnet-test", usage(input_tokens=1, speed="fast"))


# ---- rounding: exact sum, one ceiling at the end ----


def test_one_cache_read_token_costs_one_micro(table: PricingTable) -> None:
    # sonnet-test before 2026-10-01: cache read 0.30 $/MTok → 0.3 micro → 1 micro.
    old = dt.date(2026, 1, 1)
    result = cost(table, "claude-sonnet-test", usage(cache_read_input_tokens=1), on=old)
    assert result.cost_micros == 1
    assert result.lines[4] == CostLine(kind="cache_read", quantity=1, picos=300_000)


def test_sub_micro_lines_are_summed_before_rounding(table: PricingTable) -> None:
    # haiku-test: 5 reads · 0.10 = 0.5 micro, 2 five-minute writes · 1.25 = 2.5 micros.
    # Exact sum 3.0 → 3 micros (rounding each line first would give 1 + 3 = 4).
    result = cost(
        table,
        "claude-haiku-test",
        usage(cache_read_input_tokens=5, cache_creation_input_tokens=2),
    )
    assert result.cost_micros == 3
    # ten 0.3-micro reads: 3 micros, not 10
    assert (
        cost(
            table, "claude-sonnet-test", usage(cache_read_input_tokens=10), on=dt.date(2026, 1, 1)
        ).cost_micros
        == 3
    )


def test_exact_micro_amounts_are_not_rounded_up(table: PricingTable) -> None:
    assert cost(table, "claude-haiku-test", usage(input_tokens=7)).cost_micros == 7


# ---- missing fields, cache split, models ----


def test_empty_usage_costs_nothing_but_is_priced(table: PricingTable) -> None:
    result = cost(table, "claude-opus-test", Usage())
    assert result.cost_micros == 0
    assert [line.quantity for line in result.lines] == [0, 0, 0, 0, 0, 0]


def test_null_fields_count_as_zero(table: PricingTable) -> None:
    result = cost(
        table,
        "claude-opus-test",
        usage(
            input_tokens=1000,
            output_tokens=None,
            cache_creation_input_tokens=None,
            cache_read_input_tokens=None,
            cache_creation=None,
            server_tool_use=None,
        ),
    )
    assert result.cost_micros == 5_000


def test_cache_writes_without_split_are_billed_as_five_minute(table: PricingTable) -> None:
    absent = cost(table, "claude-opus-test", usage(cache_creation_input_tokens=2000))
    split = cost(
        table,
        "claude-opus-test",
        usage(cache_creation_input_tokens=2000, cache_creation=cache(five=500, hour=1500)),
    )
    assert absent.cost_micros == 2000 * 625 // 100
    assert split.cost_micros == 500 * 625 // 100 + 1500 * 10
    assert split.lines[2].quantity == 500 and split.lines[3].quantity == 1500


def test_unknown_model_is_an_error_naming_it(table: PricingTable) -> None:
    with pytest.raises(UnknownModelError) as caught:
        cost(table, "claude-nope-9", usage(input_tokens=1))
    assert caught.value.model == "claude-nope-9"
    assert str(caught.value) == (
        "model 'claude-nope-9' is not in the pricing table (add it or map an alias)"
    )
    with pytest.raises(UnknownModelError, match="'claude-nope-9'"):
        worst_case(table, "claude-nope-9", 1, 1)


def test_alias_prices_as_its_model(table: PricingTable) -> None:
    result = cost(table, "claude-opus-test-20260101", usage(input_tokens=1000))
    assert result.model == "claude-opus-test"
    assert result.cost_micros == 5_000


def test_admin_alias_via_with_aliases(table: PricingTable) -> None:
    extended = table.with_aliases({"haiku-latest": "claude-haiku-test"})
    assert cost(extended, "haiku-latest", usage(output_tokens=1000)).cost_micros == 5_000
    with pytest.raises(UnknownModelError):
        table.with_aliases({"x": "claude-missing"})


# ---- price history ----


@pytest.mark.parametrize(
    ("day", "micros", "effective"),
    [
        (dt.date(2025, 1, 1), 300, dt.date(2025, 9, 29)),  # before the first entry: the first
        (dt.date(2025, 9, 29), 300, dt.date(2025, 9, 29)),
        (dt.date(2026, 9, 30), 300, dt.date(2025, 9, 29)),  # old calls keep the old price
        (dt.date(2026, 10, 1), 150, dt.date(2026, 10, 1)),  # the cut is in force from its day
        (dt.date(2027, 1, 1), 150, dt.date(2026, 10, 1)),
    ],
)
def test_price_entry_in_force_on_the_day(
    table: PricingTable, day: dt.date, micros: int, effective: dt.date
) -> None:
    result = cost(table, "claude-sonnet-test", usage(cache_read_input_tokens=1000), on=day)
    assert result.cost_micros == micros
    assert result.price_effective == effective


def test_without_a_date_the_newest_entry_applies(table: PricingTable) -> None:
    result = cost(table, "claude-sonnet-test", usage(cache_read_input_tokens=1000))
    assert result.price_effective == dt.date(2026, 10, 1)


def test_old_long_context_rates_still_price_old_calls(table: PricingTable) -> None:
    result = cost(
        table,
        "claude-sonnet-test",
        usage(input_tokens=200_000, cache_read_input_tokens=1000),
        on=dt.date(2026, 3, 1),
    )
    assert result.band == "long_context"
    assert result.cost_micros == 200_000 * 6 + 600


# ---- worst case ----


@pytest.mark.parametrize(
    ("ttl", "micros"),
    [
        (None, 1000 * 5 + 1000 * 25),  # no cache write possible: input is the dearest prompt rate
        ("5m", 1000 * 625 // 100 + 1000 * 25),
        ("1h", 1000 * 10 + 1000 * 25),
    ],
)
def test_worst_case_for_each_cache_ttl(table: PricingTable, ttl: Any, micros: int) -> None:
    assert worst_case(table, "claude-opus-test", 1000, 1000, ttl) == micros


def test_worst_case_long_context_when_the_estimate_crosses(table: PricingTable) -> None:
    assert worst_case(table, "claude-sonnet-test", 200_000, 1000, "5m") == (
        200_000 * 375 // 100 + 15_000
    )
    assert worst_case(table, "claude-sonnet-test", 200_001, 1000, "1h") == 200_001 * 12 + 22_500
    assert worst_case(table, "claude-sonnet-test", 250_000, 1000) == 250_000 * 6 + 22_500


def test_worst_case_modifiers(table: PricingTable) -> None:
    base = worst_case(table, "claude-opus-test", 1000, 1000)
    assert base == 30_000
    assert worst_case(table, "claude-opus-test", 1000, 1000, batch=True) == 15_000
    assert worst_case(table, "claude-opus-test", 1000, 1000, us_inference=True) == 33_000
    assert worst_case(table, "claude-opus-test", 1000, 1000, fast=True) == 180_000
    assert worst_case(table, "claude-opus-test", 1000, 1000, web_searches=2) == 50_000
    old = worst_case(table, "claude-sonnet-test", 0, 0, on=dt.date(2026, 1, 1))
    assert old == 0


def test_worst_case_rounds_up(table: PricingTable) -> None:
    assert worst_case(table, "claude-haiku-test", 1, 0, "5m") == 2  # 1.25 micros → 2


def test_worst_case_covers_the_real_call(table: PricingTable) -> None:
    hold = worst_case(table, "claude-opus-test", 10_000, 2_000, "1h")
    actual = cost(
        table,
        "claude-opus-test",
        usage(
            input_tokens=1_000,
            cache_creation_input_tokens=6_000,
            cache_creation=cache(five=2_000, hour=4_000),
            cache_read_input_tokens=3_000,
            output_tokens=2_000,
        ),
    )
    assert actual.cost_micros <= hold


# ---- the pricing file itself ----


def test_table_lists_ids_and_aliases(table: PricingTable) -> None:
    assert table.version == "test-1"
    assert table.batch_discount_pct == 50
    assert table.web_search_picos_per_request == 10_000_000_000
    assert sorted(m.id for m in table.unique_models()) == [
        "claude-haiku-test",
        "claude-opus-test",
        "claude-sonnet-test",
    ]
    assert table.model("claude-opus-test-20260101") is table.model("claude-opus-test")
    assert table.model("claude-opus-test").family == "opus"
    assert table.model("claude-opus-test").status == "active"


PRICING_HEAD = """\
version: "v"
source: "s"
web_search_usd_per_1000: "10"
batch_discount_pct: 50
models:
"""


def test_pricing_file_errors_name_file_line_and_field() -> None:
    text = (
        PRICING_HEAD
        + """\
  - id: m
    family: f
    prices:
      - effective: "2026-01-01"
        input: 3
        output: "15"
        cache_write_5m: "3.75"
        cache_write_1h: "6"
        cache_read: "0.30"
"""
    )
    with pytest.raises(PricingFileError) as caught:
        parse_pricing(text, "p.yaml")
    assert str(caught.value) == (
        "p.yaml:10: models[0].prices[0].input: wrong type: expected text, got a whole number 3"
    )


def test_pricing_file_rejects_a_model_listed_twice() -> None:
    entry = """\
  - id: m
    family: f
    prices:
      - {effective: "2026-01-01", input: "1", output: "1", cache_write_5m: "1",
         cache_write_1h: "1", cache_read: "1"}
"""
    with pytest.raises(PricingFileError) as caught:
        parse_pricing(PRICING_HEAD + entry + entry, "p.yaml")
    assert str(caught.value) == "p.yaml:11: model id 'm' is listed twice"


def test_pricing_file_rejects_two_entries_on_one_date() -> None:
    text = (
        PRICING_HEAD
        + """\
  - id: m
    family: f
    prices:
      - {effective: "2026-01-01", input: "1", output: "1", cache_write_5m: "1",
         cache_write_1h: "1", cache_read: "1"}
      - {effective: "2026-01-01", input: "2", output: "1", cache_write_5m: "1",
         cache_write_1h: "1", cache_read: "1"}
"""
    )
    with pytest.raises(PricingFileError) as caught:
        parse_pricing(text, "p.yaml")
    assert str(caught.value) == "p.yaml:9: model 'm' has two price entries with one date"


def test_pricing_file_rejects_a_web_search_price_finer_than_a_micro() -> None:
    text = PRICING_HEAD.replace('"10"', '"10.0000001"') + "  []\n"
    with pytest.raises(PricingFileError) as caught:
        parse_pricing(text.replace("models:\n  []", "models: []"), "p.yaml")
    assert str(caught.value) == (
        "p.yaml:3: web_search_usd_per_1000: '10.0000001' has more precision than one "
        "micro-dollar (6 decimal places) allows"
    )
