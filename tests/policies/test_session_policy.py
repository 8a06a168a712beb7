"""Session scope in the policy (issue 14): ``period: session`` with an idle time, session rate
limits with cost velocity, and what resolves for a call that names a session."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from budgetd.periods import SESSION_PERIOD, window
from budgetd.policy.loader import parse_policy
from budgetd.policy.model import OrgPolicy
from budgetd.policy.resolve import Subject, resolve
from budgetd.pricing_table import load_pricing

POLICY = """\
org: acme
timezone: Europe/Paris
budgets:
  - {name: agent-run, scope: session, limit_usd: 5, period: session, idle: 30m,
     overrides: {long-run: 20}}
  - {name: code-run, scope: session, feature: claude-code, limit_usd: 2, period: session,
     idle: 2h}
rate_limits:
  - name: run-velocity
    scope: session
    cost_usd_per_minute: 0.50
    requests_per_minute: 60
    overrides:
      long-run: {cost_usd_per_minute: 2}
"""
NOW = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def policy() -> OrgPolicy:
    pricing = load_pricing(Path(__file__).parent.parent / "data" / "pricing.yaml")
    return parse_policy(POLICY, "acme.yaml", pricing)


def test_session_period_has_an_idle_time_and_no_calendar(policy: OrgPolicy) -> None:
    run, code = policy.budgets
    assert (run.period.text, run.period.session, run.period.idle_s) == ("session", True, 1800)
    assert not run.period.rolling and run.period.calendar is None
    assert code.period.idle_s == 7200
    win = window(run.period, policy.tz, NOW)
    assert (win.charge_id, win.spent_ids) == (SESSION_PERIOD, (SESSION_PERIOD,))
    assert (win.start, win.end) == (None, None)
    assert (win.idle_ms, win.expire_at) == (1_800_000, NOW + timedelta(minutes=30))


def test_a_call_with_a_session_counts_on_that_session(policy: OrgPolicy) -> None:
    applied = resolve(policy, Subject(org="acme", session="run-1"), "claude-haiku-test")
    assert [(b.rule.name, b.entity, b.limit, b.source) for b in applied.budgets] == [
        ("agent-run", "run-1", 5_000_000, "default")
    ]
    assert [(r.kind, r.entity, r.per_minute) for r in applied.rates] == [
        ("requests", "run-1", 60),
        ("cost_micros", "run-1", 500_000),
    ]


def test_overrides_and_feature_filters_apply_to_sessions(policy: OrgPolicy) -> None:
    subject = Subject(org="acme", session="long-run", feature="claude-code")
    applied = resolve(policy, subject, "claude-haiku-test")
    assert [(b.rule.name, b.limit, b.source) for b in applied.budgets] == [
        ("agent-run", 20_000_000, "override"),
        ("code-run", 2_000_000, "default"),
    ]
    cost = next(r for r in applied.rates if r.kind == "cost_micros")
    assert (cost.per_minute, cost.source) == (2_000_000, "override")


def test_a_call_without_a_session_has_no_session_limits(policy: OrgPolicy) -> None:
    applied = resolve(policy, Subject(org="acme", user="alice"), "claude-haiku-test")
    assert applied.budgets == () and applied.rates == ()
