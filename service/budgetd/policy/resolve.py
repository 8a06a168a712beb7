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
RateKind = Literal["requests", "input_tokens", "output_tokens", "cost_micros"]
RATE_KINDS: tuple[RateKind, ...] = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cost_micros",
)


class Subject(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling: the scopes a request names."""

    org: str
    user: str | None = None
    feature: str | None = None
    key: str | None = None
    """The name of the API key the call came with (the keys file's ``name``); None when
    authentication is off."""
    tags: tuple[str, ...] = ()
    teams: tuple[str, ...] | None = None
    """The user's teams as recorded (a ledger entry's, for the jobs); None: from the policy."""
    session: str | None = None
    """The session (an agent run, a conversation) the call belongs to."""


class AppliedBudget(msgspec.Struct, frozen=True, kw_only=True):
    rule: BudgetRule
    entity: str
    """The org, user, team, feature, key, tag or session this counter belongs to."""
    limit: Micros
    source: Source


class AppliedRate(msgspec.Struct, frozen=True, kw_only=True):
    rule: RateRule
    entity: str
    kind: RateKind
    per_minute: int
    """Requests, tokens or (kind cost_micros) micro-dollars per minute."""
    source: Source


class Applicable(msgspec.Struct, frozen=True, kw_only=True):
    budgets: tuple[AppliedBudget, ...]
    rates: tuple[AppliedRate, ...]
    teams: tuple[str, ...] = ()
    """The user's teams, which a ledger entry records."""


@lru_cache(maxsize=65_536)
def _glob(name: str, pattern: str) -> bool:
    return pattern == "*" or fnmatch.fnmatchcase(name, pattern)


def teams_of(policy: OrgPolicy, user: str | None) -> tuple[str, ...]:
    """The teams ``user`` belongs to (listed by name or matched by a team's glob)."""
    if user is None:
        return ()
    return tuple(
        name
        for name, team in policy.teams.items()
        if user in team.users or (team.match is not None and _glob(user, team.match))
    )


def _entities(policy: OrgPolicy, scope: Scope, subject: Subject, match: str) -> tuple[str, ...]:
    """The entities a rule of ``scope`` counts for this subject: one for org, user, feature,
    key and session (or none), one per team of the user for team, one per matching tag."""
    if scope == "org":
        return (subject.org,)
    if scope == "team":
        teams = teams_of(policy, subject.user) if subject.teams is None else subject.teams
        return tuple(t for t in teams if _glob(t, match))
    if scope == "tag":
        return tuple(dict.fromkeys(t for t in subject.tags if _glob(t, match)))
    name = {
        "user": subject.user,
        "feature": subject.feature,
        "key": subject.key,
        "session": subject.session,
    }[scope]
    if name is None or not _glob(name, match):
        return ()
    return (name,)


def entity_budget(policy: OrgPolicy, rule: BudgetRule, entity: str) -> AppliedBudget | None:
    """``rule``'s counter for ``entity`` with its limit; None if the rule has no such entity."""
    if rule.scope == "org":
        if entity != policy.org:
            return None
        return AppliedBudget(rule=rule, entity=entity, limit=rule.default_limit, source="org")
    if not _glob(entity, rule.match) or (rule.scope == "team" and entity not in policy.teams):
        return None
    override = rule.overrides.get(entity)
    if override is not None:
        return AppliedBudget(rule=rule, entity=entity, limit=override, source="override")
    return AppliedBudget(rule=rule, entity=entity, limit=rule.default_limit, source="default")


def _counts(rule: BudgetRule | RateRule, subject: Subject) -> bool:
    """Whether the rule's ``feature:`` filter lets this subject's call count."""
    return rule.feature is None or (
        subject.feature is not None and _glob(subject.feature, rule.feature)
    )


def applied_budgets(
    policy: OrgPolicy, rule: BudgetRule, subject: Subject
) -> tuple[AppliedBudget, ...]:
    """The counters ``rule`` keeps for this subject (several for a user in several teams)."""
    if not _counts(rule, subject):
        return ()
    return tuple(
        applied
        for entity in _entities(policy, rule.scope, subject, rule.match)
        if (applied := entity_budget(policy, rule, entity)) is not None
    )


def _rates(
    policy: OrgPolicy, rule: RateRule, subject: Subject, models: tuple[str, ...]
) -> list[AppliedRate]:
    if not _counts(rule, subject) or not any(_glob(m, p) for m in models for p in rule.models):
        return []
    applied: list[AppliedRate] = []
    for entity in _entities(policy, rule.scope, subject, rule.match):
        override = rule.overrides.get(entity) if rule.scope != "org" else None
        for kind in RATE_KINDS:
            value = getattr(override, kind) if override is not None else None
            source: Source = (
                "override" if value is not None else ("org" if rule.scope == "org" else "default")
            )
            if value is None:
                value = getattr(rule.limits, kind)
            if value is not None:
                applied.append(
                    AppliedRate(
                        rule=rule, entity=entity, kind=kind, per_minute=value, source=source
                    )
                )
    return applied


def resolve(policy: OrgPolicy, subject: Subject, model: str) -> Applicable:
    """Every budget and rate limit of ``policy`` that applies to this subject and model.

    A rate rule's model globs match the name the request uses *or* the priced model it stands
    for, so an alias (``opus-latest``) cannot slip past a ``claude-opus-*`` limit.
    """
    budgets = tuple(
        applied for rule in policy.budgets for applied in applied_budgets(policy, rule, subject)
    )
    priced = policy.pricing.models.get(model)
    models = (model,) if priced is None or priced.id == model else (model, priced.id)
    rates = tuple(r for rule in policy.rate_limits for r in _rates(policy, rule, subject, models))
    return Applicable(budgets=budgets, rates=rates, teams=teams_of(policy, subject.user))
