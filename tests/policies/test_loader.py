"""Loading a policy directory: all files or nothing; the registry keeps the last good set."""

from __future__ import annotations

from pathlib import Path

import pytest

from budgetd.policy.loader import PolicyError, load_policy_dir, parse_policy
from budgetd.policy.registry import PolicyRegistry
from budgetd.pricing_table import PricingTable, UnknownModelError, load_pricing

TEST_PRICING = Path(__file__).parent.parent / "data" / "pricing.yaml"

ACME = """\
org: acme
timezone: Europe/Paris
defaults:
  thresholds_pct: [80, 50, 100, 80]
  notify: [ops]
  hold_ttl_s: 120
channels:
  ops: {log: warning}
  hook: {webhook: "https://ops.example.com/budgetd", secret_env: HOOK_SECRET}
aliases:
  opus-latest: claude-opus-test
budgets:
  - name: org-monthly
    scope: org
    limit_usd: 1000
    period: month
  - name: per-user
    scope: user
    limit_usd: 12.50
    period: 24h
    overrides: {alice: 50, bob: "0.000001"}
    thresholds_pct: []
    on_hard_limit: warn
    mode: shadow
    failure: fail_open
    notify: [hook]
rate_limits:
  - name: opus-rpm
    scope: user
    requests_per_minute: 10
    models: [claude-opus-*]
"""

GLOBEX = """\
org: globex
timezone: America/New_York
budgets:
  - {name: daily, scope: org, limit_usd: 5, period: day}
"""


@pytest.fixture(autouse=True)
def hook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy's webhook names HOOK_SECRET; a policy naming an unset one is refused."""
    monkeypatch.setenv("HOOK_SECRET", "s3cret")


@pytest.fixture(scope="module")
def pricing() -> PricingTable:
    return load_pricing(TEST_PRICING)


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def test_valid_directory_loads_every_org(tmp_path: Path) -> None:
    write(tmp_path, {"acme.yaml": ACME, "globex.yml": GLOBEX, "notes.txt": "not a policy"})
    policies = load_policy_dir(tmp_path, pricing_path=TEST_PRICING)
    assert sorted(policies.orgs) == ["acme", "globex"]
    assert policies.files == (str(tmp_path / "acme.yaml"), str(tmp_path / "globex.yml"))
    assert policies.pricing.version == "test-1"


def test_compiled_policy_holds_micros_defaults_and_periods(pricing: PricingTable) -> None:
    acme = parse_policy(ACME, "acme.yaml", pricing)
    assert acme.tz.key == "Europe/Paris"
    assert acme.hold_ttl_s == 120
    org, user = acme.budgets
    assert org.default_limit == 1_000_000_000
    assert org.period.calendar == "month" and not org.period.rolling
    # Defaults apply where the budget says nothing; thresholds are sorted and deduplicated.
    assert org.thresholds_pct == (50, 80, 100)
    assert (org.on_hard_limit, org.mode, org.failure, org.notify) == (
        "block",
        "enforce",
        "fail_closed",
        ("ops",),
    )
    assert user.default_limit == 12_500_000
    assert user.overrides == {"alice": 50_000_000, "bob": 1}
    assert user.period.rolling and user.period.window_s == 86_400
    assert user.period.bucket_s == 3_600
    # An explicit empty list turns soft-limit warnings off; it does not fall back to defaults.
    assert user.thresholds_pct == ()
    assert (user.on_hard_limit, user.mode, user.failure, user.notify) == (
        "warn",
        "shadow",
        "fail_open",
        ("hook",),
    )
    (rate,) = acme.rate_limits
    assert rate.failure == "fail_open"  # rate limits default to defaults.rate_failure
    assert rate.models == ("claude-opus-*",)


def test_aliases_are_per_org(pricing: PricingTable) -> None:
    acme = parse_policy(ACME, "acme.yaml", pricing)
    globex = parse_policy(GLOBEX, "globex.yaml", pricing)
    assert acme.pricing.model("opus-latest").id == "claude-opus-test"
    with pytest.raises(UnknownModelError):
        globex.pricing.model("opus-latest")
    with pytest.raises(UnknownModelError):
        pricing.model("opus-latest")


def test_same_org_in_two_files_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": GLOBEX, "b.yaml": "# again\n" + GLOBEX})
    with pytest.raises(PolicyError) as caught:
        load_policy_dir(tmp_path, pricing_path=TEST_PRICING)
    assert caught.value.errors == [
        f"{tmp_path / 'b.yaml'}:2: org: org 'globex' is already defined in "
        f"{tmp_path / 'a.yaml'} (one org per file)"
    ]


def test_one_bad_file_rejects_the_whole_directory(tmp_path: Path) -> None:
    bad = GLOBEX.replace("org: globex", "org: initech").replace("limit_usd: 5", "limit_usd: -5")
    write(tmp_path, {"acme.yaml": ACME, "globex.yaml": GLOBEX, "initech.yaml": bad})
    with pytest.raises(PolicyError) as caught:
        load_policy_dir(tmp_path, pricing_path=TEST_PRICING)
    assert caught.value.errors == [
        f"{tmp_path / 'initech.yaml'}:4: budgets[0].limit_usd: must not be negative (got -5)"
    ]


def test_missing_pricing_table_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, {"globex.yaml": GLOBEX})
    with pytest.raises(PolicyError) as caught:
        load_policy_dir(tmp_path)
    assert caught.value.errors == [f"{tmp_path / 'pricing.yaml'}: pricing table not found"]


def test_pricing_yaml_in_the_directory_is_used_and_not_read_as_a_policy(tmp_path: Path) -> None:
    write(tmp_path, {"globex.yaml": GLOBEX, "pricing.yaml": TEST_PRICING.read_text()})
    policies = load_policy_dir(tmp_path)
    assert list(policies.orgs) == ["globex"]
    assert policies.files == (str(tmp_path / "globex.yaml"),)


def loaded(registry: PolicyRegistry) -> bool:
    """Read through a call, so mypy does not carry a narrowed property across reloads."""
    return registry.loaded


def test_registry_keeps_the_last_good_set_and_counts_errors(tmp_path: Path) -> None:
    write(tmp_path, {"globex.yaml": GLOBEX})
    registry = PolicyRegistry(tmp_path, pricing_path=TEST_PRICING)
    assert not loaded(registry)
    assert registry.last_status.ok is False
    assert registry.org("globex") is None
    with pytest.raises(LookupError):
        registry.current  # noqa: B018 - the property raises

    status = registry.reload()
    assert status.ok and status.files == (str(tmp_path / "globex.yaml"),)
    assert loaded(registry) and registry.load_errors == 0
    good = registry.current
    assert registry.org("globex") is good.orgs["globex"]

    write(tmp_path, {"acme.yaml": ACME.replace("period: month", "period: monthly")})
    status = registry.reload()
    assert status.ok is False
    assert status.errors == (
        f"{tmp_path / 'acme.yaml'}:16: budgets[0].period: has the wrong format: expected hour, "
        "day, week, month, session, or a rolling window like 24h or 7d (got 'monthly')",
    )
    assert registry.load_errors == 1
    assert registry.current is good  # the last good set stays in force
    assert registry.org("acme") is None
    assert registry.last_status == status

    registry.reload()
    assert registry.load_errors == 2

    write(tmp_path, {"acme.yaml": ACME})
    status = registry.reload()
    assert status.ok
    assert registry.current is not good
    assert sorted(registry.current.orgs) == ["acme", "globex"]
    assert registry.load_errors == 2  # a count of failures, never reset by a success


def test_registry_replace_installs_a_set(tmp_path: Path) -> None:
    write(tmp_path, {"globex.yaml": GLOBEX})
    policies = load_policy_dir(tmp_path, pricing_path=TEST_PRICING)
    registry = PolicyRegistry(tmp_path / "elsewhere")
    registry.replace(policies)
    assert registry.loaded and registry.current is policies
    assert registry.last_status.ok and registry.last_status.files == policies.files
