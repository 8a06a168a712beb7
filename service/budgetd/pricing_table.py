"""``policies/pricing.yaml``: the price list as data, parsed into exact integer rates.

Rates are written in USD per million tokens as decimal strings and held as integer pico-dollars
per token (see :mod:`budgetd.money`). Every model keeps its whole price history; a call is priced
by the entry in force on the day it was made, so a price change never re-prices the past.
"""

from __future__ import annotations

import datetime as dt
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from budgetd.money import (
    MoneyFormatError,
    Picos,
    usd_per_mtok_to_picos_per_token,
    usd_to_micros,
)
from budgetd.yaml_errors import YamlDocument, describe_pattern, located_validation_error

DecimalStr = Annotated[
    str,
    msgspec.Meta(
        pattern=describe_pattern(r"^\d+(\.\d+)?$", 'a decimal number in quotes, e.g. "3.75"')
    ),
]


class _Band(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    input: DecimalStr
    output: DecimalStr
    cache_write_5m: DecimalStr
    cache_write_1h: DecimalStr
    cache_read: DecimalStr


class _Dated(_Band, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A modifier's rates and when it can be asked for: from ``starts`` (inclusive) to ``ends``
    (exclusive: the first day the API refuses it). Calls made before ``ends`` still price."""

    starts: dt.date | None = None
    ends: dt.date | None = None
    successor: str | None = None
    """What to use instead once it ended, in words (e.g. another model's fast mode)."""


class _LongContext(_Dated, frozen=True, forbid_unknown_fields=True, kw_only=True):
    threshold_tokens: Annotated[int, msgspec.Meta(gt=0)]


class _PriceEntry(_Band, frozen=True, forbid_unknown_fields=True, kw_only=True):
    effective: dt.date
    long_context: _LongContext | None = None
    us_inference_multiplier: DecimalStr | None = None
    fast: _Dated | None = None


class _Model(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    id: str
    family: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9-]*$")]
    status: Literal["active", "deprecated", "retired"] = "active"
    """As written when the table was built; ``deprecated`` and ``retired`` dates decide."""
    deprecated: dt.date | None = None
    """From this day the model is deprecated (still served, no longer recommended)."""
    retired: dt.date | None = None
    """From this day the API refuses the model: new reservations are refused."""
    successor: str | None = None
    """The model id Anthropic suggests instead."""
    aliases: list[str] = msgspec.field(default_factory=list)
    prices: Annotated[list[_PriceEntry], msgspec.Meta(min_length=1)]


class _PricingFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    version: str
    source: str
    web_search_usd_per_1000: DecimalStr
    batch_discount_pct: Annotated[int, msgspec.Meta(ge=0, le=100)]
    models: list[_Model]


class Rates(msgspec.Struct, frozen=True, kw_only=True):
    """Pico-dollars per token, by token kind."""

    input: Picos
    output: Picos
    cache_write_5m: Picos
    cache_write_1h: Picos
    cache_read: Picos

    @classmethod
    def from_band(cls, band: _Band) -> Rates:
        conv = usd_per_mtok_to_picos_per_token
        return cls(
            input=conv(band.input),
            output=conv(band.output),
            cache_write_5m=conv(band.cache_write_5m),
            cache_write_1h=conv(band.cache_write_1h),
            cache_read=conv(band.cache_read),
        )


class Window(msgspec.Struct, frozen=True, kw_only=True):
    """When a modifier may be asked for (``ends`` is the first day it may not)."""

    starts: dt.date | None = None
    ends: dt.date | None = None
    successor: str | None = None

    def refusal(self, what: str, day: dt.date) -> str | None:
        """Why ``what`` cannot be reserved on ``day`` (with the date and what to use instead),
        or None when it can."""
        if self.starts is not None and day < self.starts:
            return f"{what} is available from {self.starts.isoformat()}"
        if self.ends is not None and day >= self.ends:
            instead = f"; use {self.successor}" if self.successor else ""
            return f"{what} ended on {self.ends.isoformat()}{instead}"
        return None


ALWAYS = Window()


class LongContextBand(msgspec.Struct, frozen=True, kw_only=True):
    threshold_tokens: int
    rates: Rates
    window: Window = ALWAYS


class PriceEntry(msgspec.Struct, frozen=True, kw_only=True):
    effective: dt.date
    rates: Rates
    long_context: LongContextBand | None
    us_inference_multiplier: Fraction | None
    fast: Rates | None
    fast_window: Window = ALWAYS


class ModelPricing(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    family: str
    status: str
    aliases: tuple[str, ...]
    entries: tuple[PriceEntry, ...]
    """Oldest first."""
    deprecated: dt.date | None = None
    retired: dt.date | None = None
    successor: str | None = None

    def status_on(self, day: dt.date) -> str:
        """``retired``, ``deprecated`` or ``active`` on ``day`` (dates first, then the table's
        undated status)."""
        if self.retired is not None and day >= self.retired:
            return "retired"
        if self.deprecated is not None and day >= self.deprecated:
            return "deprecated"
        if self.status == "retired" and self.retired is None:
            return "retired"
        if self.status == "deprecated" and self.deprecated is None:
            return "deprecated"
        return "active"

    def retirement(self, day: dt.date) -> str | None:
        """Why a call to this model cannot be reserved on ``day``, or None."""
        if self.status_on(day) != "retired":
            return None
        since = f" on {self.retired.isoformat()}" if self.retired is not None else ""
        instead = f"; use {self.successor}" if self.successor else ""
        return f"model {self.id!r} was retired{since}{instead}"

    def entry_at(self, day: dt.date) -> PriceEntry:
        """The price entry in force on ``day``; before the first entry, the first one."""
        chosen = self.entries[0]
        for entry in self.entries:
            if entry.effective <= day:
                chosen = entry
        return chosen


class UnknownModelError(LookupError):
    """A model id that is neither priced nor an alias of a priced model."""

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} is not in the pricing table (add it or map an alias)")
        self.model = model


class PricingTable(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    source: str
    web_search_picos_per_request: Picos
    batch_discount_pct: int
    models: dict[str, ModelPricing]
    """Every id and alias, mapped to its model."""

    def model(self, model_id: str) -> ModelPricing:
        try:
            return self.models[model_id]
        except KeyError:
            raise UnknownModelError(model_id) from None

    def with_aliases(self, aliases: dict[str, str]) -> PricingTable:
        """A table that also knows admin-defined aliases (alias → priced id)."""
        merged = dict(self.models)
        for alias, target in aliases.items():
            merged[alias] = self.model(target)
        return msgspec.structs.replace(self, models=merged)

    def unique_models(self) -> list[ModelPricing]:
        seen: dict[str, ModelPricing] = {}
        for pricing in self.models.values():
            seen.setdefault(pricing.id, pricing)
        return list(seen.values())


class PricingFileError(ValueError):
    """The pricing file is invalid; the message names file, line and field."""


def _window(raw: _Dated) -> Window:
    return Window(starts=raw.starts, ends=raw.ends, successor=raw.successor)


def _entry(raw: _PriceEntry) -> PriceEntry:
    long_context = None
    if raw.long_context is not None:
        long_context = LongContextBand(
            threshold_tokens=raw.long_context.threshold_tokens,
            rates=Rates.from_band(raw.long_context),
            window=_window(raw.long_context),
        )
    multiplier = (
        Fraction(raw.us_inference_multiplier) if raw.us_inference_multiplier is not None else None
    )
    return PriceEntry(
        effective=raw.effective,
        rates=Rates.from_band(raw),
        long_context=long_context,
        us_inference_multiplier=multiplier,
        fast=Rates.from_band(raw.fast) if raw.fast is not None else None,
        fast_window=_window(raw.fast) if raw.fast is not None else ALWAYS,
    )


def parse_pricing(text: str, filename: str = "pricing.yaml") -> PricingTable:
    document = YamlDocument.parse(text, filename, error_type=PricingFileError)
    try:
        raw = msgspec.convert(document.data, _PricingFile, strict=False)
    except msgspec.ValidationError as exc:
        raise PricingFileError(located_validation_error(exc, document, _PricingFile)) from None
    models: dict[str, ModelPricing] = {}
    for index, model in enumerate(raw.models):
        entries = tuple(sorted((_entry(e) for e in model.prices), key=lambda e: e.effective))
        if len({e.effective for e in entries}) != len(entries):
            line = document.line_of(("models", index, "prices"))
            raise PricingFileError(
                f"{filename}:{line}: model {model.id!r} has two price entries with one date"
            )
        pricing = ModelPricing(
            id=model.id,
            family=model.family,
            status=model.status,
            aliases=tuple(model.aliases),
            entries=entries,
            deprecated=model.deprecated,
            retired=model.retired,
            successor=model.successor,
        )
        for name in (model.id, *model.aliases):
            if name in models:
                line = document.line_of(("models", index, "id"))
                raise PricingFileError(f"{filename}:{line}: model id {name!r} is listed twice")
            models[name] = pricing
    try:
        search_micros_per_1000 = usd_to_micros(raw.web_search_usd_per_1000)
    except MoneyFormatError as exc:
        line = document.line_of(("web_search_usd_per_1000",))
        raise PricingFileError(f"{filename}:{line}: web_search_usd_per_1000: {exc}") from None
    return PricingTable(
        version=raw.version,
        source=raw.source,
        web_search_picos_per_request=search_micros_per_1000 * 1_000,
        batch_discount_pct=raw.batch_discount_pct,
        models=models,
    )


def load_pricing(path: Path) -> PricingTable:
    return parse_pricing(path.read_text(encoding="utf-8"), str(path))
