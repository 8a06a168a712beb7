"""Which period a moment belongs to. The period id is part of a counter's key, so a new period
starts at zero by construction and no reset job can be late or race.

A session (``period: session``) has no calendar: its window is the session id's own counter,
which lives as long as calls keep coming (its expiry slides to the last write + ``idle``), so a
session id reused after that starts at zero, as a new period does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import msgspec

from budgetd.policy.model import ROLLING_SUB_BUCKETS, CalendarUnit, PeriodSpec

COUNTER_GRACE = timedelta(days=8)
"""Counters outlive their period by this much: long enough for a late commit (holds last at
most a day) to settle into the period it was reserved in, and for reports on the last period."""


SESSION_PERIOD = "session"
"""The period id of every session window (the session id, the entity, tells them apart)."""


class PeriodWindow(msgspec.Struct, frozen=True, kw_only=True):
    charge_id: str
    """Where spend made now is counted."""
    spent_ids: tuple[str, ...]
    """Counters whose sum is the spend of the current window."""
    start: datetime | None
    """None for a session: it has no calendar."""
    end: datetime | None
    """For rolling windows: when the oldest counted sub-bucket drops out. None for a session:
    it ends ``idle`` after its last call, which only the store knows."""
    expire_at: datetime
    """When the counters expire if nothing more is written (a session's slides with writes)."""
    idle_ms: int = 0
    """Sessions only: every write moves the counter's expiry to (store) now + this."""


def _local_midnight(tz: ZoneInfo, year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=tz)


def calendar_bounds(
    unit: CalendarUnit, tz: ZoneInfo, now: datetime
) -> tuple[str, datetime, datetime]:
    """(id, start, end) of the calendar period containing ``now`` in zone ``tz``."""
    local = now.astimezone(tz)
    if unit == "hour":
        # Hours are taken in UTC offset terms so the repeated hour of a DST fall-back gets its
        # own id (the offset is part of it) instead of merging two hours into one counter.
        start = local.replace(minute=0, second=0, microsecond=0)
        end = (start.astimezone(UTC) + timedelta(hours=1)).astimezone(tz)
        return start.strftime("%Y-%m-%dT%H%z"), start, end
    if unit == "day":
        start = _local_midnight(tz, local.year, local.month, local.day)
        nxt = local.date() + timedelta(days=1)
        return local.strftime("%Y-%m-%d"), start, _local_midnight(tz, nxt.year, nxt.month, nxt.day)
    if unit == "week":
        monday = local.date() - timedelta(days=local.weekday())
        nxt = monday + timedelta(days=7)
        iso_year, iso_week, _ = local.isocalendar()
        return (
            f"{iso_year}-W{iso_week:02d}",
            _local_midnight(tz, monday.year, monday.month, monday.day),
            _local_midnight(tz, nxt.year, nxt.month, nxt.day),
        )
    start = _local_midnight(tz, local.year, local.month, 1)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return local.strftime("%Y-%m"), start, _local_midnight(tz, year, month, 1)


def window(spec: PeriodSpec, tz: ZoneInfo, now: datetime) -> PeriodWindow:
    """The window of ``spec`` that contains ``now`` (cached: every request asks for it)."""
    if spec.session:
        return PeriodWindow(
            charge_id=SESSION_PERIOD,
            spent_ids=(SESSION_PERIOD,),
            start=None,
            end=None,
            expire_at=now + timedelta(seconds=spec.idle_s),
            idle_ms=spec.idle_s * 1000,
        )
    if spec.calendar is not None:
        # Period boundaries fall on whole minutes in every modern zone, so all instants of one
        # minute share one window.
        return _calendar_window(spec.calendar, tz, int(now.timestamp()) // 60)
    return _rolling_window(spec.window_s, spec.bucket_s, int(now.timestamp()) // spec.bucket_s)


@lru_cache(maxsize=4096)
def _calendar_window(unit: CalendarUnit, tz: ZoneInfo, minute: int) -> PeriodWindow:
    period_id, start, end = calendar_bounds(unit, tz, datetime.fromtimestamp(minute * 60, UTC))
    return PeriodWindow(
        charge_id=period_id,
        spent_ids=(period_id,),
        start=start,
        end=end,
        expire_at=end + COUNTER_GRACE,
    )


@lru_cache(maxsize=4096)
def _rolling_window(window_s: int, width: int, index: int) -> PeriodWindow:
    # A rolling window is ROLLING_SUB_BUCKETS sub-buckets plus the current, partial one: it
    # counts a little more than the window, never less, so it cannot admit more than the limit
    # in any window of the stated length.
    ids = tuple(f"r{i}" for i in range(index - ROLLING_SUB_BUCKETS, index + 1))
    start = datetime.fromtimestamp((index - ROLLING_SUB_BUCKETS) * width, tz=UTC)
    end = datetime.fromtimestamp((index + 1) * width, tz=UTC)
    return PeriodWindow(
        charge_id=ids[-1],
        spent_ids=ids,
        start=start,
        end=end,
        expire_at=end + timedelta(seconds=window_s) + COUNTER_GRACE,
    )
