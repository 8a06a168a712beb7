"""Request → the limits that apply to it, each with where its value came from.

Cost is O(number of rules): user and feature overrides are dict look-ups, and glob matches are
cached, so 100,000 overrides resolve as fast as one (see ``bench/resolve.py``).
"""

from __future__ import annotations

import fnmatch
from functools import lru_cache
from typing import Literal

import msgspec

from budgetd.money import Micros
from budgetd.policy.model import BudgetRule, OrgPolicy, RateRule
from budgetd.policy.schema import Scope

Source = Literal["org", "default", "override"]
RateKind = Literal["requests", "input_tokens", "output_tokens"]
RATE_KINDS: tuple[RateKind, ...] = ("requests", "input_tokens", "output_tokens")


class Subject(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling: the scopes a request names."""

    org: str
    user: str | None = None
    feature: str | None = None


class AppliedBudget(msgspec.Struct, frozen=True, kw_only=True):
    rule: BudgetRule
    entity: str
    """The org, user or feature this counter belongs to."""
    limit: Micros
    source: Source


class AppliedRate(msgspec.Struct, frozen=True, kw_only=True):
    rule: RateRule
    entity: str
    kind: RateKind
    per_minute: int
    source: Source


class Applicable(msgspec.Struct, frozen=True, kw_only=True):
    budgets: tuple[AppliedBudget, ...]
    rates: tuple[AppliedRate, ...]


@lru_cache(maxsize=65_536)
def _glob(name: str, pattern: str) -> bool:
    return pattern == "*" or fnmatch.fnmatchcase(name, pattern)


def _entity(scope: Scope, subject: Subject, match: str) -> str | None:
    """The entity a rule of ``scope`` counts for this subject, or None if it does not apply."""
    if scope == "org":
        return subject.org
    name = subject.user if scope == "user" else subject.feature
    if name is None or not _glob(name, match):
        return None
    return name


def applied_budget(rule: BudgetRule, subject: Subject) -> AppliedBudget | None:
    """The counter ``rule`` keeps for this subject, with its limit; None if it does not apply."""
    entity = _entity(rule.scope, subject, rule.match)
    if entity is None:
        return None
    if rule.scope == "org":
        return AppliedBudget(rule=rule, entity=entity, limit=rule.default_limit, source="org")
    override = rule.overrides.get(entity)
    if override is not None:
        return AppliedBudget(rule=rule, entity=entity, limit=override, source="override")
    return AppliedBudget(rule=rule, entity=entity, limit=rule.default_limit, source="default")


def _rates(rule: RateRule, subject: Subject, models: tuple[str, ...]) -> list[AppliedRate]:
    entity = _entity(rule.scope, subject, rule.match)
    if entity is None or not any(_glob(m, p) for m in models for p in rule.models):
        return []
    override = rule.overrides.get(entity) if rule.scope != "org" else None
    applied: list[AppliedRate] = []
    for kind in RATE_KINDS:
        value = getattr(override, kind) if override is not None else None
        source: Source = (
            "override" if value is not None else ("org" if rule.scope == "org" else "default")
        )
        if value is None:
            value = getattr(rule.limits, kind)
        if value is not None:
            applied.append(
                AppliedRate(rule=rule, entity=entity, kind=kind, per_minute=value, source=source)
            )
    return applied


def resolve(policy: OrgPolicy, subject: Subject, model: str) -> Applicable:
    """Every budget and rate limit of ``policy`` that applies to this subject and model.

    A rate rule's model globs match the name the request uses *or* the priced model it stands
    for, so an alias (``opus-latest``) cannot slip past a ``claude-opus-*`` limit.
    """
    budgets = tuple(
        applied for rule in policy.budgets if (applied := applied_budget(rule, subject)) is not None
    )
    priced = policy.pricing.models.get(model)
    models = (model,) if priced is None or priced.id == model else (model, priced.id)
    rates = tuple(r for rule in policy.rate_limits for r in _rates(rule, subject, models))
    return Applicable(budgets=budgets, rates=rates)
