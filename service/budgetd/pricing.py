"""Usage → cost, and the worst case a hold must cover. Pure functions over a PricingTable.

Arithmetic is exact: token counts times integer pico-dollar rates, then the serving modifiers
(batch discount, US-only inference) as exact fractions, then one ceiling to micro-dollars.
"""

from __future__ import annotations

import datetime as dt
from fractions import Fraction
from typing import Literal

import msgspec

from budgetd.money import Micros, Picos, picos_to_micros_ceil
from budgetd.pricing_table import ModelPricing, PriceEntry, PricingTable, Rates
from budgetd.usage import Usage

CacheTtl = Literal["5m", "1h"]
TOKEN_KINDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")


class PricingError(ValueError):
    """The usage cannot be priced (e.g. fast mode on a model that has no fast rates)."""


class NotOffered(PricingError):
    """The model or modifier is no longer (or not yet) offered on the day of a reservation;
    ``field`` is the request field at fault."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class CostLine(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    """One of TOKEN_KINDS, or ``web_search``."""
    quantity: int
    picos: Picos
    """Exact cost of this line in pico-dollars, modifiers applied, rounded up to a whole pico."""


class Cost(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    """The priced model id (aliases resolved)."""
    cost_micros: Micros
    lines: tuple[CostLine, ...]
    pricing_version: str
    price_effective: dt.date
    band: Literal["standard", "long_context"]
    speed: Literal["standard", "fast"]
    batch: bool
    us_inference: bool


def _band_rates(
    pricing: ModelPricing, entry: PriceEntry, prompt_tokens: int, fast: bool
) -> tuple[Rates, Literal["standard", "long_context"]]:
    if fast:
        if entry.fast is None:
            raise PricingError(f"model {pricing.id!r} has no fast-mode price")
        return entry.fast, "standard"
    band = entry.long_context
    if band is not None and prompt_tokens > band.threshold_tokens:
        return band.rates, "long_context"
    return entry.rates, "standard"


def _modifier(table: PricingTable, entry: PriceEntry, batch: bool, us: bool) -> tuple[int, int]:
    """The serving modifiers as an exact ratio (numerator, denominator) of integers."""
    if not batch and not (us and entry.us_inference_multiplier is not None):
        return 1, 1  # the common case, without building Fractions
    factor = Fraction(1)
    if batch:
        factor *= Fraction(100 - table.batch_discount_pct, 100)
    if us and entry.us_inference_multiplier is not None:
        factor *= entry.us_inference_multiplier
    return factor.numerator, factor.denominator


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def cost(
    table: PricingTable,
    model: str,
    usage: Usage,
    *,
    batch: bool = False,
    on: dt.date | None = None,
) -> Cost:
    """The exact cost of one call from its ``usage`` object.

    ``batch`` may also come from ``usage.service_tier == "batch"``. ``on`` is the day the call
    was made (the price entry in force then applies); default: the newest entry.
    """
    pricing = table.model(model)
    entry = pricing.entry_at(on) if on is not None else pricing.entries[-1]
    is_batch = batch or usage.service_tier == "batch"
    is_us = usage.inference_geo == "us"
    rates, band = _band_rates(pricing, entry, usage.prompt_tokens, usage.speed == "fast")
    num, den = _modifier(table, entry, is_batch, is_us)
    five, hour = usage.cache_writes
    quantities = {
        "input": usage.uncached_input,
        "output": usage.output,
        "cache_write_5m": five,
        "cache_write_1h": hour,
        "cache_read": usage.cache_read,
    }
    # Everything is kept over the common denominator ``den`` until the single rounding.
    total = 0
    lines: list[CostLine] = []
    for kind in TOKEN_KINDS:
        scaled = quantities[kind] * getattr(rates, kind) * num
        total += scaled
        lines.append(CostLine(kind=kind, quantity=quantities[kind], picos=_ceil_div(scaled, den)))
    searches = usage.web_searches
    search_picos = searches * table.web_search_picos_per_request
    total += search_picos * den
    lines.append(CostLine(kind="web_search", quantity=searches, picos=search_picos))
    return Cost(
        model=pricing.id,
        cost_micros=picos_to_micros_ceil(_ceil_div(total, den)),
        lines=tuple(lines),
        pricing_version=table.version,
        price_effective=entry.effective,
        band=band,
        speed="fast" if usage.speed == "fast" else "standard",
        batch=is_batch,
        us_inference=is_us and entry.us_inference_multiplier is not None,
    )


def _check_offered(
    pricing: ModelPricing, entry: PriceEntry, input_tokens: int, fast: bool, on: dt.date
) -> None:
    """A new call must use a model and modifiers the API still offers on ``on``. Only
    reservations ask: commits and records price calls already made, on any day."""
    if reason := pricing.retirement(on):
        raise NotOffered(reason, "model")
    fast_refused = fast and entry.fast_window.refusal(f"fast mode on {pricing.id!r}", on)
    if fast_refused:
        raise NotOffered(fast_refused, "speed")
    band = entry.long_context
    if band is not None and input_tokens > band.threshold_tokens:
        what = f"the long-context band above {band.threshold_tokens} tokens on {pricing.id!r}"
        if reason := band.window.refusal(what, on):
            raise NotOffered(reason, "input_tokens")


def worst_case(
    table: PricingTable,
    model: str,
    input_tokens: int,
    max_tokens: int,
    cache_ttl: CacheTtl | None = None,
    *,
    batch: bool = False,
    us_inference: bool = False,
    fast: bool = False,
    web_searches: int = 0,
    on: dt.date | None = None,
) -> Micros:
    """The hold a reservation needs so that the real call can never cost more.

    Every prompt token is priced at the highest rate the request can incur: uncached input, or a
    cache write of the TTL the request uses (a 1-hour request may also write 5-minute blocks), or
    a cache read. Output is priced at ``max_tokens``. The long-context band applies when the
    estimated prompt crosses its threshold. A prompt estimate that is too low can still make the
    call dearer than the hold; the commit then records the overrun.
    """
    pricing = table.model(model)
    entry = pricing.entry_at(on) if on is not None else pricing.entries[-1]
    if on is not None:
        _check_offered(pricing, entry, input_tokens, fast, on)
    rates, _ = _band_rates(pricing, entry, input_tokens, fast)
    prompt_rates = [rates.input, rates.cache_read]
    if cache_ttl is not None:
        prompt_rates.append(rates.cache_write_5m)
    if cache_ttl == "1h":
        prompt_rates.append(rates.cache_write_1h)
    num, den = _modifier(table, entry, batch, us_inference)
    total = (input_tokens * max(prompt_rates) + max_tokens * rates.output) * num
    total += web_searches * table.web_search_picos_per_request * den
    return picos_to_micros_ceil(_ceil_div(total, den))
