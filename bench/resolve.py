"""Resolution cost with 100,000 user overrides: it must stay in microseconds (O(1) in users).

Run: ``python bench/resolve.py``. Builds the policy from generated YAML through the real loader
(so the timing covers what production resolves), then times resolve() for three requests.
"""

from __future__ import annotations

import time
from pathlib import Path

from budgetd.policy.loader import parse_policy
from budgetd.policy.model import OrgPolicy
from budgetd.policy.resolve import Subject, resolve
from budgetd.pricing_table import load_pricing

ROOT = Path(__file__).resolve().parent.parent
USERS = 100_000
ITERATIONS = 50_000


def build_policy() -> OrgPolicy:
    overrides = "\n".join(f"      user-{i}: {10 + i % 90}" for i in range(USERS))
    rate_overrides = "\n".join(
        f"      user-{i}: {{requests_per_minute: {5 + i % 50}}}" for i in range(USERS)
    )
    text = f"""\
org: bench
timezone: America/New_York
budgets:
  - {{name: org-month, scope: org, limit_usd: 100000, period: month}}
  - {{name: org-24h, scope: org, limit_usd: 10000, period: 24h}}
  - name: user-day
    scope: user
    limit_usd: 20
    period: day
    overrides:
{overrides}
  - {{name: search, scope: feature, match: "search-*", limit_usd: 300, period: 7d}}
  - {{name: feature-hour, scope: feature, limit_usd: 50, period: hour}}
rate_limits:
  - {{name: org-rpm, scope: org, requests_per_minute: 2000}}
  - name: user-opus
    scope: user
    models: ["claude-opus-*"]
    requests_per_minute: 20
    output_tokens_per_minute: 40000
    overrides:
{rate_overrides}
"""
    pricing = load_pricing(ROOT / "tests" / "data" / "pricing.yaml")
    return parse_policy(text, "bench.yaml", pricing)


def per_call_us(policy: OrgPolicy, subject: Subject, model: str) -> float:
    for _ in range(1_000):  # warm the glob cache
        resolve(policy, subject, model)
    start = time.perf_counter()
    for _ in range(ITERATIONS):
        resolve(policy, subject, model)
    return (time.perf_counter() - start) / ITERATIONS * 1e6


def main() -> None:
    started = time.perf_counter()
    policy = build_policy()
    built = time.perf_counter() - started
    user_rule = next(b for b in policy.budgets if b.name == "user-day")
    print(f"policy: {len(user_rule.overrides):,} user overrides, built in {built:.1f} s")
    cases = [
        ("overridden user", Subject(org="bench", user="user-77777"), "claude-opus-test"),
        ("default user", Subject(org="bench", user="someone-else"), "claude-opus-test"),
        (
            "feature request",
            Subject(org="bench", feature="search-web"),
            "claude-sonnet-test",
        ),
    ]
    for label, subject, model in cases:
        applied = resolve(policy, subject, model)
        micros = per_call_us(policy, subject, model)
        print(
            f"{label:<16} {micros:6.2f} µs per resolve "
            f"({len(applied.budgets)} budgets, {len(applied.rates)} rate limits)"
        )


if __name__ == "__main__":
    main()
