"""One YAML file per policy mistake, each with the exact message an admin sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from budgetd.policy.loader import PolicyError, load_policy_dir, parse_policy
from budgetd.pricing_table import PricingTable, load_pricing

HERE = Path(__file__).parent
INVALID = HERE / "invalid"
TEST_PRICING = HERE.parent / "data" / "pricing.yaml"

EXPECTED: dict[str, str] = {
    "alias_redefines_model.yaml": (
        "alias_redefines_model.yaml:4: aliases.claude-haiku-test: 'claude-haiku-test' is "
        "already a priced model id; an alias cannot redefine it"
    ),
    "alias_unknown_model.yaml": (
        "alias_unknown_model.yaml:5: aliases.sonnet-latest: alias target 'claude-sonnet-9' is"
        " not a priced model"
    ),
    "bad_channel_name.yaml": (
        "bad_channel_name.yaml:6: channels.finance team: key has the wrong format: expected a"
        " name of up to 64 letters, digits, '_', '.' or '-', starting with a letter or digit "
        "(got 'finance team')"
    ),
    "bad_period.yaml": (
        "bad_period.yaml:7: budgets[0].period: has the wrong format: expected hour, day, "
        "week, month, session, or a rolling window like 24h or 7d (got 'monthly')"
    ),
    "bad_idle.yaml": (
        "bad_idle.yaml:8: budgets[0].idle: has the wrong format: expected a duration like 90s, "
        "30m, 2h or 1d (got 'half an hour')"
    ),
    "bad_scope.yaml": (
        "bad_scope.yaml:5: budgets[0].scope: 'company' is not allowed here; use one of org, "
        "feature, user, team, key, tag, session"
    ),
    "bad_yaml_syntax.yaml": (
        "bad_yaml_syntax.yaml:7: (YAML syntax): not valid YAML: while parsing a flow sequence"
        " (line 6), did not find expected ',' or ']'"
    ),
    "channel_two_kinds.yaml": (
        "channel_two_kinds.yaml:5: channels.ops: a channel needs exactly one of webhook, "
        "slack, log (this one has webhook, slack)"
    ),
    "duplicate_budget_names.yaml": (
        "duplicate_budget_names.yaml:8: budgets[1].name: duplicate name 'monthly' (first used"
        " on line 4)"
    ),
    "duplicate_yaml_key.yaml": (
        "duplicate_yaml_key.yaml:8: budgets[0].limit_usd: key 'limit_usd' appears twice in "
        "one mapping (first on line 6)"
    ),
    "idle_on_calendar_budget.yaml": (
        "idle_on_calendar_budget.yaml:8: budgets[0].idle: idle applies to period: session only"
    ),
    "empty_file.yaml": (
        "empty_file.yaml:1: (top level): the file is empty; a policy needs org and timezone"
    ),
    "missing_required_key.yaml": (
        "missing_required_key.yaml:4: budgets[0].period: missing required key 'period'"
    ),
    "negative_limit.yaml": (
        "negative_limit.yaml:6: budgets[0].limit_usd: must not be negative (got -5)"
    ),
    "not_a_mapping.yaml": (
        "not_a_mapping.yaml:1: (top level): a policy file must be a mapping (org, timezone, ...)"
    ),
    "notify_unknown_channel.yaml": (
        "notify_unknown_channel.yaml:11: budgets[0].notify[1]: notify names unknown channel "
        "'finance-email'"
    ),
    "org_budget_overrides.yaml": (
        "org_budget_overrides.yaml:8: budgets[0].overrides: an org-scope budget cannot have "
        "overrides (they are for user, team and feature scopes)"
    ),
    "override_outside_match.yaml": (
        "override_outside_match.yaml:11: budgets[0].overrides.chat: override 'chat' never "
        "applies: it does not match 'search-*'"
    ),
    "rate_limit_no_limits.yaml": (
        "rate_limit_no_limits.yaml:4: rate_limits[0]: a rate limit needs at least one of "
        "requests_per_minute, input_tokens_per_minute, output_tokens_per_minute, "
        "cost_usd_per_minute"
    ),
    "rolling_window_too_long.yaml": (
        "rolling_window_too_long.yaml:7: budgets[0].period: a rolling window can be at most "
        "366d (got 400d)"
    ),
    "secret_env_on_slack.yaml": (
        "secret_env_on_slack.yaml:6: channels.ops-slack.secret_env: secret_env applies to "
        "webhooks only"
    ),
    "secret_env_unset.yaml": (
        "secret_env_unset.yaml:6: channels.ops-hook.secret_env: the environment variable "
        "BUDGETD_TEST_SECRET_NOBODY_SETS is not set (or empty): this webhook would be sent "
        "unsigned. Set it, or remove secret_env to send unsigned on purpose"
    ),
    "session_idle_shorter_than_hold.yaml": (
        "session_idle_shorter_than_hold.yaml:10: budgets[0].idle: idle 5m is shorter than a "
        "hold may last (defaults.hold_ttl_s: 600 s): a session's counter could expire under an "
        "open hold"
    ),
    "session_idle_too_long.yaml": (
        "session_idle_too_long.yaml:8: budgets[0].idle: idle can be at most 30d (got 31d)"
    ),
    "session_period_wrong_scope.yaml": (
        "session_period_wrong_scope.yaml:7: budgets[0].period: period session is for scope "
        "session (this budget's scope is user)"
    ),
    "session_scope_calendar.yaml": (
        "session_scope_calendar.yaml:7: budgets[0].period: a session-scope budget has no "
        "calendar: write period: session (got day)"
    ),
    "session_without_idle.yaml": (
        "session_without_idle.yaml:4: budgets[0]: a period: session budget needs idle: how long "
        "a session lives without a call (e.g. idle: 30m)"
    ),
    "team_empty.yaml": (
        "team_empty.yaml:4: teams.platform: a team needs users, a match glob on user ids, or both"
    ),
    "team_override_unknown.yaml": (
        "team_override_unknown.yaml:12: budgets[0].overrides.platfrom: override 'platfrom' "
        "names no team (teams: platform)"
    ),
    "team_scope_without_teams.yaml": (
        "team_scope_without_teams.yaml:5: budgets[0].scope: scope team needs teams: define "
        "them at the top level"
    ),
    "threshold_over_100.yaml": (
        "threshold_over_100.yaml:8: budgets[0].thresholds_pct[2]: must be at most 100 (got 120)"
    ),
    "threshold_zero.yaml": (
        "threshold_zero.yaml:4: defaults.thresholds_pct[0]: must be at least 1 (got 0)"
    ),
    "too_precise_usd.yaml": (
        "too_precise_usd.yaml:10: budgets[0].overrides.bob: not a valid USD amount: 1e-07 has"
        " more precision than one micro-dollar (6 decimal places) allows"
    ),
    "unknown_key_in_rate_override.yaml": (
        "unknown_key_in_rate_override.yaml:11: rate_limits[0].overrides.bob.rpm: unknown key "
        "'rpm' (check the spelling; see policies/schema.json)"
    ),
    "unknown_key_nested.yaml": (
        "unknown_key_nested.yaml:10: budgets[1].limit: unknown key 'limit' (check the "
        "spelling; see policies/schema.json)"
    ),
    "unknown_key_top.yaml": (
        "unknown_key_top.yaml:3: budget: unknown key 'budget' (check the spelling; see "
        "policies/schema.json)"
    ),
    "unknown_model_pattern.yaml": (
        "unknown_model_pattern.yaml:9: rate_limits[0].models[1]: model pattern 'gpt-4*' "
        "matches no priced model (see `budgetd pricing`)"
    ),
    "unknown_timezone.yaml": (
        "unknown_timezone.yaml:2: timezone: unknown time zone 'Europe/Atlantis' (use an IANA name)"
    ),
    "usd_not_a_number.yaml": (
        "usd_not_a_number.yaml:6: budgets[0].limit_usd: not a valid USD amount: 'lots' is not"
        " a decimal number"
    ),
    "webhook_not_url.yaml": (
        "webhook_not_url.yaml:5: channels.ops.webhook: has the wrong format: expected an "
        "http:// or https:// URL (got 'ops.example.com/budgetd')"
    ),
    "wrong_type.yaml": (
        "wrong_type.yaml:4: defaults.hold_ttl_s: wrong type: expected a whole number, got "
        "text 'five minutes'"
    ),
}


@pytest.fixture(scope="module")
def pricing() -> PricingTable:
    return load_pricing(TEST_PRICING)


@pytest.mark.parametrize("filename", sorted(EXPECTED))
def test_invalid_policy_message(filename: str, pricing: PricingTable) -> None:
    text = (INVALID / filename).read_text(encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, filename, pricing)
    assert caught.value.errors == [EXPECTED[filename]]
    assert str(caught.value) == EXPECTED[filename]


def test_every_invalid_file_has_an_expected_message() -> None:
    on_disk = {p.name for p in INVALID.glob("*.yaml")}
    assert on_disk == set(EXPECTED)


def test_directory_load_reports_every_bad_file_with_its_path() -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_dir(INVALID, pricing_path=TEST_PRICING)
    expected = sorted(f"{INVALID / name}{msg[len(name) :]}" for name, msg in EXPECTED.items())
    assert sorted(caught.value.errors) == expected


def test_all_mistakes_of_one_file_are_reported_together(pricing: PricingTable) -> None:
    text = """\
org: acme
timezone: Mars/Olympus
budgets:
  - name: daily
    scope: org
    limit_usd: -1
    period: day
  - name: daily
    scope: user
    limit_usd: 2
    period: day
"""
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "many.yaml", pricing)
    assert caught.value.errors == [
        "many.yaml:2: timezone: unknown time zone 'Mars/Olympus' (use an IANA name)",
        "many.yaml:6: budgets[0].limit_usd: must not be negative (got -1)",
        "many.yaml:8: budgets[1].name: duplicate name 'daily' (first used on line 4)",
    ]


def test_names_are_shared_between_budgets_and_rate_limits(pricing: PricingTable) -> None:
    text = """\
org: acme
timezone: UTC
budgets:
  - {name: chat, scope: org, limit_usd: 1, period: day}
rate_limits:
  - {name: chat, scope: org, requests_per_minute: 10}
"""
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml", pricing)
    assert caught.value.errors == [
        "p.yaml:6: rate_limits[0].name: duplicate name 'chat' (first used on line 4)"
    ]
