"""Calendar periods in the org's zone (across DST) and rolling sub-bucket windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from budgetd.periods import calendar_bounds, window
from budgetd.policy.model import PeriodSpec

NY = ZoneInfo("America/New_York")


def test_day_follows_the_zone_not_utc() -> None:
    # 03:30 UTC on the 24th is still the 23rd in New York.
    pid, start, end = calendar_bounds("day", NY, datetime(2026, 11, 24, 3, 30, tzinfo=UTC))
    assert pid == "2026-11-23"
    assert start == datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
    assert end == datetime(2026, 11, 24, 5, 0, tzinfo=UTC)


def test_day_of_dst_fall_back_lasts_25_hours() -> None:
    pid, start, end = calendar_bounds("day", NY, datetime(2026, 11, 1, 12, 0, tzinfo=UTC))
    assert pid == "2026-11-01"
    # Aware datetimes of one zone subtract as wall time: compare instants in UTC.
    assert end.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=25)
    assert start.astimezone(UTC) == datetime(2026, 11, 1, 4, 0, tzinfo=UTC)


def test_day_of_dst_spring_forward_lasts_23_hours() -> None:
    _, start, end = calendar_bounds("day", NY, datetime(2026, 3, 8, 12, 0, tzinfo=UTC))
    assert end.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=23)


def test_repeated_hour_of_fall_back_gets_two_ids() -> None:
    first = calendar_bounds("hour", NY, datetime(2026, 11, 1, 5, 30, tzinfo=UTC))  # 01:30 EDT
    second = calendar_bounds("hour", NY, datetime(2026, 11, 1, 6, 30, tzinfo=UTC))  # 01:30 EST
    assert first[0] != second[0]
    assert first[2] == second[1]


def test_week_starts_monday_and_month_rolls_over_the_year() -> None:
    pid, start, _ = calendar_bounds("week", NY, datetime(2026, 11, 26, 12, tzinfo=UTC))
    assert pid == "2026-W48"
    assert start.astimezone(NY).weekday() == 0
    pid, start, end = calendar_bounds("month", NY, datetime(2026, 12, 31, 12, tzinfo=UTC))
    assert pid == "2026-12"
    assert end.astimezone(NY) == datetime(2027, 1, 1, tzinfo=NY)


def test_rolling_window_counts_whole_sub_buckets_covering_the_window() -> None:
    spec = PeriodSpec(text="24h", window_s=86_400)
    now = datetime(2026, 11, 23, 15, 20, tzinfo=UTC)
    win = window(spec, UTC, now)
    assert len(win.spent_ids) == 25
    assert win.charge_id == win.spent_ids[-1]
    # It never counts less than the last 24 hours.
    assert win.start <= now - timedelta(hours=24)
    later = window(spec, UTC, now + timedelta(hours=1))
    assert later.spent_ids[:-1] == win.spent_ids[1:]
