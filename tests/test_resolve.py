"""Which limits apply to a request, and where each value came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from budgetd.policy.loader import parse_policy
from budgetd.policy.model import OrgPolicy
from budgetd.policy.resolve import Applicable, Subject, resolve
from budgetd.pricing_table import load_pricing

POLICY = """\
org: acme
timezone: UTC
budgets:
  - {name: org-month, scope: org, limit_usd: 1000, period: month}
  - name: user-day
    scope: user
    limit_usd: 10
    period: day
    overrides: {alice: 50, bob: 0}
  - name: search-features
    scope: feature
    match: "search-*"
    limit_usd: 20
    period: 24h
    overrides: {search-web: 40}
  - {name: any-feature, scope: feature, limit_usd: 5, period: week}
  - {name: contractors, scope: user, match: "ext-*", limit_usd: 1, period: day}
rate_limits:
  - name: org-all
    scope: org
    requests_per_minute: 1000
    input_tokens_per_minute: 400000
  - name: user-opus
    scope: user
    models: ["claude-opus-*"]
    requests_per_minute: 10
    input_tokens_per_minute: 20000
    output_tokens_per_minute: 4000
    overrides:
      alice: {input_tokens_per_minute: 90000}
      bob: {requests_per_minute: 1, output_tokens_per_minute: 0}
  - name: user-small
    scope: user
    models: ["claude-haiku-*", "claude-sonnet-test"]
    output_tokens_per_minute: 8000
  - name: feature-rpm
    scope: feature
    match: "search-*"
    requests_per_minute: 30
"""


@pytest.fixture(scope="module")
def policy() -> OrgPolicy:
    pricing = load_pricing(Path(__file__).parent / "data" / "pricing.yaml")
    return parse_policy(POLICY, "acme.yaml", pricing)


def budgets(applied: Applicable) -> list[tuple[str, str, int, str]]:
    return [(b.rule.name, b.entity, b.limit, b.source) for b in applied.budgets]


def rates(applied: Applicable) -> list[tuple[str, str, str, int, str]]:
    return [(r.rule.name, r.entity, r.kind, r.per_minute, r.source) for r in applied.rates]


def test_org_only_request(policy: OrgPolicy) -> None:
    applied = resolve(policy, Subject(org="acme"), "claude-sonnet-test")
    # No user and no feature: user and feature budgets do not apply.
    assert budgets(applied) == [("org-month", "acme", 1_000_000_000, "org")]
    assert rates(applied) == [
        ("org-all", "acme", "requests", 1000, "org"),
        ("org-all", "acme", "input_tokens", 400_000, "org"),
    ]


def test_default_user(policy: OrgPolicy) -> None:
    applied = resolve(policy, Subject(org="acme", user="carol"), "claude-sonnet-test")
    assert budgets(applied) == [
        ("org-month", "acme", 1_000_000_000, "org"),
        ("user-day", "carol", 10_000_000, "default"),
    ]


def test_overridden_user_including_a_zero_override(policy: OrgPolicy) -> None:
    alice = resolve(policy, Subject(org="acme", user="alice"), "claude-haiku-test")
    assert ("user-day", "alice", 50_000_000, "override") in budgets(alice)
    # An override of 0 is a real limit (blocks everything), not "no override".
    bob = resolve(policy, Subject(org="acme", user="bob"), "claude-haiku-test")
    assert ("user-day", "bob", 0, "override") in budgets(bob)


def test_user_budget_with_a_match_glob(policy: OrgPolicy) -> None:
    applied = resolve(policy, Subject(org="acme", user="ext-dave"), "claude-haiku-test")
    assert budgets(applied) == [
        ("org-month", "acme", 1_000_000_000, "org"),
        ("user-day", "ext-dave", 10_000_000, "default"),
        ("contractors", "ext-dave", 1_000_000, "default"),
    ]


def test_feature_match_glob_and_override(policy: OrgPolicy) -> None:
    web = resolve(policy, Subject(org="acme", feature="search-web"), "claude-haiku-test")
    assert budgets(web) == [
        ("org-month", "acme", 1_000_000_000, "org"),
        ("search-features", "search-web", 40_000_000, "override"),
        ("any-feature", "search-web", 5_000_000, "default"),
    ]
    docs = resolve(policy, Subject(org="acme", feature="search-docs"), "claude-haiku-test")
    assert ("search-features", "search-docs", 20_000_000, "default") in budgets(docs)
    chat = resolve(policy, Subject(org="acme", feature="chat"), "claude-haiku-test")
    assert budgets(chat) == [
        ("org-month", "acme", 1_000_000_000, "org"),
        ("any-feature", "chat", 5_000_000, "default"),
    ]


def test_glob_is_case_sensitive(policy: OrgPolicy) -> None:
    applied = resolve(policy, Subject(org="acme", feature="Search-web"), "claude-haiku-test")
    assert [b.rule.name for b in applied.budgets] == ["org-month", "any-feature"]


def test_user_and_feature_together(policy: OrgPolicy) -> None:
    applied = resolve(
        policy, Subject(org="acme", user="alice", feature="search-web"), "claude-opus-test"
    )
    assert [(b.rule.name, b.entity) for b in applied.budgets] == [
        ("org-month", "acme"),
        ("user-day", "alice"),
        ("search-features", "search-web"),
        ("any-feature", "search-web"),
    ]
    assert [(r.rule.name, r.kind) for r in applied.rates] == [
        ("org-all", "requests"),
        ("org-all", "input_tokens"),
        ("user-opus", "requests"),
        ("user-opus", "input_tokens"),
        ("user-opus", "output_tokens"),
        ("feature-rpm", "requests"),
    ]


def test_per_model_rate_limits_with_globs(policy: OrgPolicy) -> None:
    opus = resolve(policy, Subject(org="acme", user="carol"), "claude-opus-test")
    assert rates(opus)[2:] == [
        ("user-opus", "carol", "requests", 10, "default"),
        ("user-opus", "carol", "input_tokens", 20_000, "default"),
        ("user-opus", "carol", "output_tokens", 4_000, "default"),
    ]
    haiku = resolve(policy, Subject(org="acme", user="carol"), "claude-haiku-test")
    assert rates(haiku)[2:] == [("user-small", "carol", "output_tokens", 8_000, "default")]
    sonnet = resolve(policy, Subject(org="acme", user="carol"), "claude-sonnet-test")
    assert rates(sonnet)[2:] == [("user-small", "carol", "output_tokens", 8_000, "default")]


def test_alias_of_a_model_is_matched_by_its_own_name(policy: OrgPolicy) -> None:
    # Rate rules match the model name the request uses; the dated alias still matches the glob.
    applied = resolve(policy, Subject(org="acme", user="carol"), "claude-opus-test-20260101")
    assert [r.rule.name for r in applied.rates][2:] == ["user-opus"] * 3


def test_rate_overrides_replace_only_the_kinds_they_name(policy: OrgPolicy) -> None:
    alice = resolve(policy, Subject(org="acme", user="alice"), "claude-opus-test")
    assert rates(alice)[2:] == [
        ("user-opus", "alice", "requests", 10, "default"),
        ("user-opus", "alice", "input_tokens", 90_000, "override"),
        ("user-opus", "alice", "output_tokens", 4_000, "default"),
    ]
    bob = resolve(policy, Subject(org="acme", user="bob"), "claude-opus-test")
    assert rates(bob)[2:] == [
        ("user-opus", "bob", "requests", 1, "override"),
        ("user-opus", "bob", "input_tokens", 20_000, "default"),
        ("user-opus", "bob", "output_tokens", 0, "override"),
    ]


def test_feature_rate_limit_needs_a_matching_feature(policy: OrgPolicy) -> None:
    none = resolve(policy, Subject(org="acme", user="carol"), "claude-sonnet-test")
    assert "feature-rpm" not in {r.rule.name for r in none.rates}
    other = resolve(policy, Subject(org="acme", feature="chat"), "claude-sonnet-test")
    assert "feature-rpm" not in {r.rule.name for r in other.rates}
    search = resolve(policy, Subject(org="acme", feature="search-x"), "claude-sonnet-test")
    assert ("feature-rpm", "search-x", "requests", 30, "default") in rates(search)


def test_applied_rule_carries_period_and_modes(policy: OrgPolicy) -> None:
    applied = resolve(policy, Subject(org="acme", feature="search-web"), "claude-haiku-test")
    search = applied.budgets[1]
    assert search.rule.period.window_s == 86_400
    assert search.rule.mode == "enforce" and search.rule.failure == "fail_closed"


def test_admin_alias_cannot_evade_a_model_family_rate_limit() -> None:
    pricing = load_pricing(Path(__file__).parent / "data" / "pricing.yaml")
    policy = parse_policy(
        POLICY.replace("budgets:\n", "aliases:\n  big-model: claude-opus-test\nbudgets:\n", 1),
        "acme.yaml",
        pricing,
    )
    applied = resolve(policy, Subject(org="acme", user="alice"), "big-model")
    assert [(r.rule.name, r.kind, r.per_minute) for r in applied.rates][2:] == [
        ("user-opus", "requests", 10),
        ("user-opus", "input_tokens", 90_000),
        ("user-opus", "output_tokens", 4_000),
    ]


def test_unpriced_model_resolves_by_its_name_only(policy: OrgPolicy) -> None:
    # Pricing rejects unknown models elsewhere; resolution itself does not raise.
    applied = resolve(policy, Subject(org="acme", user="carol"), "claude-opus-unknown")
    assert [r.rule.name for r in applied.rates][2:] == ["user-opus"] * 3
