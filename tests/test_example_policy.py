"""The shipped example policy loads with the shipped price table and means what its comments say.

No skips: if policies/pricing.yaml is missing or broken, these tests fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from budgetd.cli import main
from budgetd.policy.loader import load_policy_dir
from budgetd.policy.model import OrgPolicy
from budgetd.policy.resolve import Subject, resolve

POLICIES = Path(__file__).parent.parent / "policies"


@pytest.fixture(scope="module")
def acme() -> OrgPolicy:
    assert (POLICIES / "pricing.yaml").is_file(), "policies/pricing.yaml is missing"
    policies = load_policy_dir(POLICIES)
    assert str(POLICIES / "example.yaml") in policies.files
    return policies.orgs["acme-research"]


def test_policies_dir_validates_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate", str(POLICIES)]) == 0
    assert capsys.readouterr().out.startswith("OK: ")


def test_example_uses_every_feature(acme: OrgPolicy) -> None:
    assert acme.timezone == "Europe/Berlin"
    assert acme.hold_ttl_s == 600
    kinds = {
        next(k for k in ("webhook", "slack", "log") if getattr(ch, k) is not None)
        for ch in acme.channels.values()
    }
    assert kinds == {"webhook", "slack", "log"}
    budgets = {b.name: b for b in acme.budgets}
    assert {b.scope for b in acme.budgets} == {"org", "user", "feature", "team", "key", "session"}
    assert {b.period.calendar for b in acme.budgets if b.period.calendar} == {
        "hour",
        "day",
        "week",
        "month",
    }
    assert budgets["agent-run"].period.idle_s == 1800
    assert any(b.period.rolling for b in acme.budgets)
    assert any(b.overrides for b in acme.budgets)
    assert any(b.scope == "feature" and b.match != "*" for b in acme.budgets)
    assert budgets["search-features"].on_hard_limit == "warn"
    assert budgets["org-rolling-24h"].mode == "shadow"
    assert budgets["feature-hourly"].failure == "fail_open"
    assert budgets["org-monthly"].thresholds_pct == (50, 80, 100)
    rates = {r.name: r for r in acme.rate_limits}
    assert rates["user-opus"].models == ("claude-opus-*",)
    assert rates["org-all-models"].limits.output_tokens == 400_000
    assert rates["search-output"].mode == "shadow"
    assert rates["search-output"].failure == "fail_closed"
    assert rates["session-velocity"].limits.cost_micros == 500_000


def test_model_globs_match_real_models(acme: OrgPolicy) -> None:
    ids = {m.id for m in acme.pricing.unique_models()}
    for family in ("opus", "sonnet", "haiku"):
        assert any(i.startswith(f"claude-{family}-") for i in ids), family


def test_example_resolves_as_commented(acme: OrgPolicy) -> None:
    opus = next(m.id for m in acme.pricing.unique_models() if m.id.startswith("claude-opus-"))
    applied = resolve(acme, Subject(org="acme-research", user="alice", feature="search-web"), opus)
    limits = {b.rule.name: (b.limit, b.source) for b in applied.budgets}
    assert limits == {
        "org-monthly": (25_000_000_000, "org"),
        "org-rolling-24h": (2_500_000_000, "org"),
        "user-daily": (150_000_000, "override"),
        "search-features": (900_000_000, "override"),
        "feature-hourly": (50_000_000, "default"),
        "team-monthly": (2_000_000_000, "default"),
    }
    alice_opus = {
        r.kind: (r.per_minute, r.source) for r in applied.rates if r.rule.name == "user-opus"
    }
    assert alice_opus == {
        "requests": (60, "override"),
        "input_tokens": (800_000, "override"),
        "output_tokens": (40_000, "default"),
    }


def test_example_team_and_claude_code_budgets(acme: OrgPolicy) -> None:
    haiku = next(m.id for m in acme.pricing.unique_models() if m.id.startswith("claude-haiku-"))
    applied = resolve(
        acme, Subject(org="acme-research", user="ext-vendor-qa", feature="claude-code"), haiku
    )
    limits = {(b.rule.name, b.entity): b.limit for b in applied.budgets}
    assert limits[("claude-code-daily", "ext-vendor-qa")] == 30_000_000
    assert limits[("team-monthly", "contractors")] == 500_000_000
    assert {(r.rule.name, r.entity) for r in applied.rates if r.rule.scope == "team"} == {
        ("team-requests", "contractors")
    }


def test_example_session_budget_and_velocity(acme: OrgPolicy) -> None:
    haiku = next(m.id for m in acme.pricing.unique_models() if m.id.startswith("claude-haiku-"))
    applied = resolve(acme, Subject(org="acme-research", session="run-42"), haiku)
    assert [
        (b.rule.name, b.entity, b.limit) for b in applied.budgets if b.rule.scope == "session"
    ] == [("agent-run", "run-42", 5_000_000)]
    assert [
        (r.rule.name, r.kind, r.per_minute) for r in applied.rates if r.rule.scope == "session"
    ] == [("session-velocity", "cost_micros", 500_000)]
