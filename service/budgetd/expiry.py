"""When a counter expires by design, and what an old ledger entry's counter is called now.

A counter is named as a ledger entry's ``charged`` field names it: ``<hash>#<field>``
(store/keys.py, ``charged``). A calendar period's hash expires at its period's end plus
``COUNTER_GRACE``; a rolling budget's sub-bucket hash (25 sub-buckets) at the end of its last
sub-bucket, plus the window, plus the grace. Scripts never let a hash expire sooner (they keep
it at least that long, and a day past its last write), so a counter that is missing before that
time was lost, and one missing after it may have expired.

Ledger entries (and archive sums) written before issue 13's layout name the old per-budget keys
(``bd:{o:<org>}:b:<budget>:<entity>:<period id>``); ``current`` maps them to the counter that
``budgetd store migrate`` folded them into. A rolling one needs its sub-bucket width, from the
policy."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime

from budgetd.periods import COUNTER_GRACE, calendar_bounds
from budgetd.policy.model import OrgPolicy, PeriodSpec
from budgetd.store import keys


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


def current(org: str, counter: str, widths: Mapping[str, int], held: bool = False) -> str:
    """``counter`` (a ``charged`` item, or an old-layout key: its ``spent`` field, or with
    ``held`` its ``held`` field) in today's layout.
    ``widths``: budget → sub-bucket width (s) of the rolling budgets. What cannot be mapped (a
    rolling budget no longer in the policy) is returned as it was."""
    if "#" in counter:
        return counter
    tag = keys.tag(org)
    if counter.startswith(tag + ":h:"):  # a rolling budget's old held key
        budget, _, entity = counter[len(tag) + 3 :].partition(":")
        return keys.charged(keys.rolling_held(org), keys.budget_field(budget, entity) + "|h")
    if not counter.startswith(tag + ":b:"):
        return counter
    budget, _, rest = counter[len(tag) + 3 :].partition(":")
    entity, _, period_id = rest.rpartition(":")
    field = keys.budget_field(budget, entity)
    if period_id.startswith("r") and period_id[1:].isdigit():
        if held:  # a rolling budget holds in the org's held hash, never in a sub-bucket
            return keys.charged(keys.rolling_held(org), field + "|h")
        width = widths.get(budget)
        if width is None:
            return counter
        index = int(period_id[1:])
        return keys.charged(keys.rolling_chunk(org, width, index), keys.rolling_field(field, index))
    return keys.charged(keys.counters(org, period_id), field + ("|h" if held else "|s"))


class CounterExpiry:
    """A counter (``<hash>#<field>``, or an old-layout key) → when it expires by design (epoch
    ms); None when it cannot be told (not a counter, or a budget no longer in the policy)."""

    def __init__(self, policy: OrgPolicy) -> None:
        self.policy = policy
        self.org = policy.org
        self.specs: dict[str, PeriodSpec] = {rule.name: rule.period for rule in policy.budgets}
        self.widths = {
            name: spec.bucket_s for name, spec in self.specs.items() if spec.calendar is None
        }
        self.prefix = keys.tag(policy.org) + ":c:"

    def current(self, counter: str, held: bool = False) -> str:
        return current(self.org, counter, self.widths, held)

    def __call__(self, counter: str) -> int | None:
        key, _, field = self.current(counter).partition("#")
        if not key.startswith(self.prefix):
            return None
        period_key = key[len(self.prefix) :]
        spec = self.specs.get(field.split("|", 1)[0])
        if spec is None:
            return None
        if spec.calendar is not None:
            inside = _calendar_start(period_key, spec, self.policy)
            if inside is None:
                return None
            _, _, end = calendar_bounds(spec.calendar, self.policy.tz, inside.astimezone(UTC))
            return _ms(end + COUNTER_GRACE)
        width, _, chunk = period_key.partition(":")
        if width != f"r{spec.bucket_s}" or not chunk.isdigit():
            return None
        end_s = (int(chunk) + 1) * keys.ROLLING_CHUNK * spec.bucket_s
        return (end_s + spec.window_s) * 1000 + int(COUNTER_GRACE.total_seconds() * 1000)


def counter_expiry(policy: OrgPolicy) -> CounterExpiry:
    """The expiry-by-design of ``policy``'s org's counters."""
    return CounterExpiry(policy)
