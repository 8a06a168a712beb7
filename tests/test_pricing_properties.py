"""Properties of the cost engine over arbitrary usage: additive within one rounding, monotone,
and never above the worst case a hold was sized for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from budgetd.pricing import cost, worst_case
from budgetd.pricing_table import load_pricing
from budgetd.usage import Usage

TABLE = load_pricing(Path(__file__).parent / "data" / "pricing.yaml")
MODELS = ["claude-opus-test", "claude-sonnet-test", "claude-haiku-test"]
LONG_CONTEXT_AT = 200_000
"""claude-sonnet-test's threshold; prompts are kept on one side of it where the band matters."""

counts = st.integers(min_value=0, max_value=60_000)


@st.composite
def raw_usages(draw: st.DrawFn, max_prompt: int = LONG_CONTEXT_AT // 2) -> dict[str, int]:
    """Token counts with a prompt of at most ``max_prompt`` tokens (so a + b stays in one band)."""
    parts = draw(st.lists(counts, min_size=4, max_size=4))
    total = sum(parts)
    if total > max_prompt:
        parts = [p * max_prompt // total for p in parts]
    uncached, five, hour, read = parts
    return {
        "input_tokens": uncached,
        "five": five,
        "hour": hour,
        "cache_read_input_tokens": read,
        "output_tokens": draw(counts),
        "web_search_requests": draw(st.integers(min_value=0, max_value=20)),
    }


def to_usage(raw: dict[str, int], **extra: Any) -> Usage:
    return msgspec.convert(
        {
            "input_tokens": raw["input_tokens"],
            "output_tokens": raw["output_tokens"],
            "cache_read_input_tokens": raw["cache_read_input_tokens"],
            "cache_creation_input_tokens": raw["five"] + raw["hour"],
            "cache_creation": {
                "ephemeral_5m_input_tokens": raw["five"],
                "ephemeral_1h_input_tokens": raw["hour"],
            },
            "server_tool_use": {"web_search_requests": raw["web_search_requests"]},
            **extra,
        },
        Usage,
    )


def add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a[k] + b[k] for k in a}


modifiers = st.fixed_dictionaries(
    {},
    optional={
        "service_tier": st.sampled_from(["batch", "standard"]),
        "inference_geo": st.sampled_from(["us", "global"]),
    },
)


@settings(max_examples=300)
@given(model=st.sampled_from(MODELS), a=raw_usages(), b=raw_usages(), extra=modifiers)
def test_cost_is_additive_within_one_rounding(
    model: str, a: dict[str, int], b: dict[str, int], extra: dict[str, str]
) -> None:
    one = cost(TABLE, model, to_usage(a, **extra)).cost_micros
    two = cost(TABLE, model, to_usage(b, **extra)).cost_micros
    both = cost(TABLE, model, to_usage(add(a, b), **extra))
    assert both.band == "standard"
    assert one + two >= both.cost_micros >= one + two - 1


@settings(max_examples=100)
@given(a=raw_usages(), b=raw_usages())
def test_cost_is_additive_in_the_long_context_band(a: dict[str, int], b: dict[str, int]) -> None:
    # Push both parts above the threshold with uncached input: the sum stays above it too.
    a = {**a, "input_tokens": a["input_tokens"] + LONG_CONTEXT_AT + 1}
    b = {**b, "input_tokens": b["input_tokens"] + LONG_CONTEXT_AT + 1}
    one = cost(TABLE, "claude-sonnet-test", to_usage(a)).cost_micros
    two = cost(TABLE, "claude-sonnet-test", to_usage(b)).cost_micros
    both = cost(TABLE, "claude-sonnet-test", to_usage(add(a, b)))
    assert both.band == "long_context"
    assert one + two >= both.cost_micros >= one + two - 1


@settings(max_examples=100)
@given(a=raw_usages(), b=raw_usages())
def test_cost_is_additive_in_fast_mode(a: dict[str, int], b: dict[str, int]) -> None:
    one = cost(TABLE, "claude-opus-test", to_usage(a, speed="fast")).cost_micros
    two = cost(TABLE, "claude-opus-test", to_usage(b, speed="fast")).cost_micros
    both = cost(TABLE, "claude-opus-test", to_usage(add(a, b), speed="fast")).cost_micros
    assert one + two >= both >= one + two - 1


KINDS = [
    "input_tokens",
    "five",
    "hour",
    "cache_read_input_tokens",
    "output_tokens",
    "web_search_requests",
]


@settings(max_examples=300)
@given(
    model=st.sampled_from(MODELS),
    base=raw_usages(max_prompt=400_000),
    kind=st.sampled_from(KINDS),
    more=st.integers(min_value=1, max_value=9_000),  # searches stay within bounds.py's 10,000
    extra=modifiers,
)
def test_cost_is_monotone_in_every_token_kind(
    model: str, base: dict[str, int], kind: str, more: int, extra: dict[str, str]
) -> None:
    # Crossing into the long-context band only raises rates, so monotonicity holds across it too.
    bigger = {**base, kind: base[kind] + more}
    before = cost(TABLE, model, to_usage(base, **extra)).cost_micros
    after = cost(TABLE, model, to_usage(bigger, **extra)).cost_micros
    assert after >= before
    # 20 tokens of any kind cost at least one micro on every model here, even at the batch
    # discount (cheapest: 0.10 $/MTok · 50 %).
    if more >= 20:
        assert after > before


@st.composite
def reservations(draw: st.DrawFn) -> tuple[str, int, int, str | None, dict[str, int]]:
    """A reservation (model, estimate, max_tokens, ttl) and a real call that fits inside it."""
    model = draw(st.sampled_from(MODELS))
    estimate = draw(st.integers(min_value=0, max_value=400_000))
    max_tokens = draw(st.integers(min_value=0, max_value=64_000))
    ttl = draw(st.sampled_from([None, "5m", "1h"]))
    prompt = draw(st.integers(min_value=0, max_value=estimate))
    # Same band as the estimate: a call under a long-context estimate may still be long-context
    # only if the estimate is; a call under a standard estimate is standard by construction.
    cuts = sorted(draw(st.lists(st.integers(0, prompt), min_size=3, max_size=3)))
    uncached, five, hour, read = (cuts[0], cuts[1] - cuts[0], cuts[2] - cuts[1], prompt - cuts[2])
    if ttl is None:  # no cache writes can happen
        uncached, five, hour = uncached + five + hour, 0, 0
    elif ttl == "5m":
        five, hour = five + hour, 0
    raw = {
        "input_tokens": uncached,
        "five": five,
        "hour": hour,
        "cache_read_input_tokens": read,
        "output_tokens": draw(st.integers(min_value=0, max_value=max_tokens)),
        "web_search_requests": 0,
    }
    return model, estimate, max_tokens, ttl, raw


@settings(max_examples=500)
@given(reservation=reservations(), batch=st.booleans(), us=st.booleans())
def test_worst_case_covers_every_call_within_the_estimate(
    reservation: tuple[str, int, int, Any, dict[str, int]], batch: bool, us: bool
) -> None:
    model, estimate, max_tokens, ttl, raw = reservation
    hold = worst_case(TABLE, model, estimate, max_tokens, ttl, batch=batch, us_inference=us)
    extra = {"inference_geo": "us"} if us else {}
    actual = cost(TABLE, model, to_usage(raw, **extra), batch=batch)
    assert actual.cost_micros <= hold


@settings(max_examples=100)
@given(reservation=reservations())
def test_worst_case_covers_fast_calls(
    reservation: tuple[str, int, int, Any, dict[str, int]],
) -> None:
    _, estimate, max_tokens, ttl, raw = reservation
    hold = worst_case(TABLE, "claude-opus-test", estimate, max_tokens, ttl, fast=True)
    actual = cost(TABLE, "claude-opus-test", to_usage(raw, speed="fast"))
    assert actual.cost_micros <= hold
