"""When a period counter expires by design: its period's end plus ``COUNTER_GRACE`` (a rolling
sub-bucket: its end plus the window, plus the grace). Scripts never let a counter expire
sooner (they keep a counter at least that long, and a day past its last write), so a counter
that is missing before that time was lost, and one missing after it may have expired.

Counter keys name their budget and period id, not the time zone or the sub-bucket width: those
come from the org's policy."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

from budgetd.periods import COUNTER_GRACE, calendar_bounds
from budgetd.policy.model import OrgPolicy, PeriodSpec
from budgetd.store import keys

CounterExpiry = Callable[[str], int | None]
"""A counter key → when it expires by design (epoch ms); None when it cannot be told (not a
period counter, or a budget no longer in the policy)."""


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _calendar_start(period_id: str, spec: PeriodSpec, policy: OrgPolicy) -> datetime | None:
    """An instant inside the calendar period ``period_id`` (None: not this unit's id)."""
    tz = policy.tz
    try:
        if spec.calendar == "hour":
            return datetime.strptime(period_id, "%Y-%m-%dT%H%z")
        if spec.calendar == "day":
            day = date.fromisoformat(period_id)
        elif spec.calendar == "week":
            year, week = period_id.split("-W")
            day = date.fromisocalendar(int(year), int(week), 1)
        else:
            year, month = period_id.split("-")
            day = date(int(year), int(month), 1)
    except ValueError:
        return None
    # Noon, not midnight: inside the day even where midnight is skipped by a DST change.
    return datetime(day.year, day.month, day.day, 12, tzinfo=tz)


def counter_expiry(policy: OrgPolicy) -> CounterExpiry:
    """The expiry-by-design of ``policy``'s org's period counters."""
    prefix = keys.tag(policy.org) + ":b:"
    specs = {rule.name: rule.period for rule in policy.budgets}

    def expires_at(key: str) -> int | None:
        if not key.startswith(prefix):
            return None
        budget, _, rest = key[len(prefix) :].partition(":")
        period_id = rest.rsplit(":", 1)[-1]
        spec = specs.get(budget)
        if spec is None:
            return None
        if spec.calendar is not None:
            inside = _calendar_start(period_id, spec, policy)
            if inside is None:
                return None
            _, _, end = calendar_bounds(spec.calendar, policy.tz, inside.astimezone(UTC))
            return _ms(end + COUNTER_GRACE)
        if not period_id.startswith("r") or not period_id[1:].isdigit():
            return None
        end_s = (int(period_id[1:]) + 1) * spec.bucket_s
        return (end_s + spec.window_s) * 1000 + int(COUNTER_GRACE.total_seconds() * 1000)

    return expires_at
