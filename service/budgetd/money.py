"""Money is integer micro-dollars everywhere; this module is the only door from decimal USD.

Rates in the pricing table are USD per million tokens. One USD per million tokens is exactly one
pico-dollar (1e-12 USD) per token times 1e6, so rates are held as integer pico-dollars per token
and a call's cost is an integer number of pico-dollars until it is rounded up, once, to micros.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

Micros = int
"""An amount of money in integer micro-dollars (1e-6 USD)."""

Picos = int
"""An amount of money in integer pico-dollars (1e-12 USD); only ever an intermediate."""

MICROS_PER_USD = 1_000_000
PICOS_PER_MICRO = 1_000_000


class MoneyFormatError(ValueError):
    """A decimal amount cannot be represented exactly at the required precision."""


def _exact_scaled(value: str | int | float | Decimal, scale: int, what: str) -> int:
    try:
        # float goes through repr so that 12.5 (YAML gives a float) stays exactly 12.5.
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation as exc:
        raise MoneyFormatError(f"{value!r} is not a decimal number") from exc
    if not amount.is_finite():
        raise MoneyFormatError(f"{value!r} is not a finite number")
    scaled = amount * scale
    if scaled != scaled.to_integral_value():
        raise MoneyFormatError(f"{value!r} has more precision than {what} allows")
    return int(scaled)


def usd_to_micros(value: str | int | float | Decimal) -> Micros:
    """Convert a USD amount written by a person (``12.50``) to exact micro-dollars."""
    return _exact_scaled(value, MICROS_PER_USD, "one micro-dollar (6 decimal places)")


def usd_per_mtok_to_picos_per_token(value: str | int | float | Decimal) -> Picos:
    """Convert a price in USD per million tokens to exact pico-dollars per token."""
    return _exact_scaled(value, 1_000_000, "one millionth of a dollar per million tokens")


def picos_to_micros_ceil(picos: Picos) -> Micros:
    """Round pico-dollars up to whole micro-dollars: the single rounding step of a cost."""
    return -(-picos // PICOS_PER_MICRO)


def format_usd(micros: Micros) -> str:
    """Render micros as a USD string with all six decimals kept (no float on the way)."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}${whole:,}.{frac:06d}"
