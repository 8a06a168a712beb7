"""Money: exact conversion from what people write, one ceiling, and formatting without floats."""

from __future__ import annotations

from decimal import Decimal

import pytest

from budgetd.money import (
    MoneyFormatError,
    format_usd,
    picos_to_micros_ceil,
    usd_per_mtok_to_picos_per_token,
    usd_to_micros,
)


@pytest.mark.parametrize(
    ("value", "micros"),
    [
        ("12.50", 12_500_000),
        (12.5, 12_500_000),
        (0.1, 100_000),  # via repr: no binary-float residue
        (0.000001, 1),
        ("0.000001", 1),
        (7, 7_000_000),
        (0, 0),
        (Decimal("1234.567891"), 1_234_567_891),
        ("-2.5", -2_500_000),  # the converter is exact; the loader rejects negatives
        ("1e3", 1_000_000_000),
    ],
)
def test_usd_to_micros_is_exact(value: str | int | float | Decimal, micros: int) -> None:
    assert usd_to_micros(value) == micros


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "0.0000001",
            "'0.0000001' has more precision than one micro-dollar (6 decimal places) allows",
        ),
        (1.0000005, "1.0000005 has more precision than one micro-dollar (6 decimal places) allows"),
        ("ten", "'ten' is not a decimal number"),
        ("", "'' is not a decimal number"),
        ("Infinity", "'Infinity' is not a finite number"),
        (float("nan"), "nan is not a finite number"),
    ],
)
def test_usd_to_micros_rejects_what_it_cannot_hold(value: str | float, message: str) -> None:
    with pytest.raises(MoneyFormatError) as caught:
        usd_to_micros(value)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("rate", "picos"),
    [
        ("5", 5_000_000),
        ("0.30", 300_000),
        ("3.75", 3_750_000),
        ("0.000001", 1),
        ("22.50", 22_500_000),
    ],
)
def test_rate_per_mtok_is_picos_per_token(rate: str, picos: int) -> None:
    assert usd_per_mtok_to_picos_per_token(rate) == picos


def test_rate_finer_than_a_pico_per_token_is_rejected() -> None:
    with pytest.raises(MoneyFormatError):
        usd_per_mtok_to_picos_per_token("0.0000001")


@pytest.mark.parametrize(
    ("picos", "micros"),
    [(0, 0), (1, 1), (999_999, 1), (1_000_000, 1), (1_000_001, 2), (2_999_999, 3), (-1, 0)],
)
def test_picos_round_up_to_micros(picos: int, micros: int) -> None:
    assert picos_to_micros_ceil(picos) == micros


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "$0.000000"),
        (1, "$0.000001"),
        (12_500_000, "$12.500000"),
        (1_234_567_890_123, "$1,234,567.890123"),
        (-1, "-$0.000001"),
        (-1_500_000, "-$1.500000"),
    ],
)
def test_format_usd_keeps_six_decimals(micros: int, text: str) -> None:
    assert format_usd(micros) == text
