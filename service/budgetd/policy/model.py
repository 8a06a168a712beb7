"""Compiled policy: what the loader produces and the engine reads. Money already in micros."""

from __future__ import annotations

from fractions import Fraction
from typing import Literal
from zoneinfo import ZoneInfo

import msgspec

from budgetd.money import Micros
from budgetd.policy.schema import Channel, Failure, HardAction, Mode, Scope
from budgetd.pricing_table import PricingTable

CalendarUnit = Literal["hour", "day", "week", "month"]
DIGEST = "(digest)"
"""The budget name of daily digest events (no budget can be named so)."""
ROLLING_SUB_BUCKETS = 24
"""A rolling window is counted in this many sub-buckets (plus the current one)."""


class PeriodSpec(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    """As written in the policy: ``day``, ``24h``, ``session``..."""
    calendar: CalendarUnit | None = None
    window_s: int = 0
    """Rolling windows only: the window length."""
    idle_s: int = 0
    """Sessions only: the session's counters expire this long after its last write."""

    @property
    def session(self) -> bool:
        return self.idle_s > 0

    @property
    def rolling(self) -> bool:
        return self.calendar is None and not self.session

    @property
    def bucket_s(self) -> int:
        return self.window_s // ROLLING_SUB_BUCKETS


class BudgetRule(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    scope: Scope
    default_limit: Micros
    overrides: dict[str, Micros]
    match: str
    period: PeriodSpec
    thresholds_pct: tuple[int, ...]
    on_hard_limit: HardAction
    mode: Mode
    failure: Failure
    notify: tuple[str, ...]
    forecast: bool = True
    feature: str | None = None
    """Only calls whose feature matches this glob count; None: every call."""
    spike_factor: Fraction | None = None
    """None: no spike alerts for this budget."""
    spike_min: Micros = 0


class RateLimits(msgspec.Struct, frozen=True, kw_only=True):
    requests: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_micros: Micros | None = None
    """Cost velocity: micro-dollars per minute."""


class RateRule(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    scope: Scope
    limits: RateLimits
    overrides: dict[str, RateLimits]
    models: tuple[str, ...]
    match: str
    mode: Mode
    failure: Failure
    feature: str | None = None
    """Only calls whose feature matches this glob count; None: every call."""


class TeamSpec(msgspec.Struct, frozen=True, kw_only=True):
    users: frozenset[str]
    match: str | None = None


class OrgPolicy(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    timezone: str
    tz: ZoneInfo
    source: str
    budgets: tuple[BudgetRule, ...]
    rate_limits: tuple[RateRule, ...]
    channels: dict[str, Channel]
    pricing: PricingTable
    """The pricing table with this org's aliases added."""
    hold_ttl_s: int
    teams: dict[str, TeamSpec] = msgspec.field(default_factory=dict)

    def notify_for(self, budget: str) -> tuple[str, ...]:
        """The channels that hear about ``budget``'s events (none for an unknown budget); the
        daily digest goes to the channels with ``digest: true``."""
        if budget == DIGEST:
            return tuple(name for name, channel in self.channels.items() if channel.digest)
        return next((rule.notify for rule in self.budgets if rule.name == budget), ())


class PolicySet(msgspec.Struct, frozen=True, kw_only=True):
    orgs: dict[str, OrgPolicy]
    pricing: PricingTable
    files: tuple[str, ...]
