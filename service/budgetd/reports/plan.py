"""What a new policy would change, against the live store: budgets added, removed and changed
(old → new limits), the entities over a changed budget's new limit right now and by how much,
the ones that would cross a threshold, and shadow budgets' would-deny counts so far.

Candidates are the entities with spend this month or last (the report aggregates' rankings),
pruned to those whose month spend could reach the lowest threshold of the new limit: a
period's spend is never more than the month's it falls in, so nothing is missed and an org of
100,000 users is not a scan. Their figures come from an engine over the new policy on the same
store, so "used" means exactly what the engine would enforce."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec

from budgetd import counters
from budgetd.clock import Clock
from budgetd.engine import Engine
from budgetd.metrics import Metrics
from budgetd.policy.model import BudgetRule, OrgPolicy, PolicySet
from budgetd.policy.registry import PolicyRegistry
from budgetd.policy.resolve import entity_budget
from budgetd.reports import follower
from budgetd.store import keys, streams
from budgetd.store.scripted import ScriptStore


class LimitChange(msgspec.Struct, frozen=True, kw_only=True):
    entity: str
    """``*`` for the rule's default limit, else the overridden entity."""
    old_micros: int | None
    new_micros: int | None


class Over(msgspec.Struct, frozen=True, kw_only=True):
    entity: str
    used_micros: int
    limit_micros: int
    over_micros: int


class Crossing(msgspec.Struct, frozen=True, kw_only=True):
    entity: str
    used_micros: int
    limit_micros: int
    threshold_pct: int
    """The highest threshold the new limit puts this entity past (not past under the old)."""


class BudgetPlan(msgspec.Struct, frozen=True, kw_only=True):
    budget: str
    scope: str
    change: str
    """``added``, ``removed`` or ``changed``."""
    what: list[str]
    """What changed: ``limit``, ``overrides``, ``period``, ``mode``, ``thresholds``..."""
    limits: list[LimitChange]
    mode: str
    blocks: bool
    """Enforced and blocking: an entity over its limit is denied."""
    over: list[Over] = []
    crossing: list[Crossing] = []
    shadow_would_deny: int | None = None
    """Shadow budgets: would-deny events so far (in the event stream's retention)."""


class OrgPlan(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    change: str
    """``added``, ``removed``, ``changed`` or ``unchanged``."""
    budgets: list[BudgetPlan]


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    orgs: list[OrgPlan]
    would_block: bool
    """Some entity is over an enforced, blocking budget's new limit right now."""
    summary: str


def digest(directory: Path) -> str:
    """SHA-256 over the policy files' names and contents (sorted): the same files, the same
    digest, on every replica."""
    h = hashlib.sha256()
    for path in sorted(directory.glob("*.y*ml")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _limits(old: BudgetRule | None, new: BudgetRule | None) -> list[LimitChange]:
    out: list[LimitChange] = []
    o = old.default_limit if old else None
    n = new.default_limit if new else None
    if o != n:
        out.append(LimitChange(entity="*", old_micros=o, new_micros=n))
    names = sorted(set(old.overrides if old else {}) | set(new.overrides if new else {}))
    for name in names:
        a = old.overrides.get(name) if old else None
        b = new.overrides.get(name) if new else None
        if a != b:
            out.append(LimitChange(entity=name, old_micros=a, new_micros=b))
    return out


def _what(old: BudgetRule, new: BudgetRule) -> list[str]:
    fields = {
        "limit": "default_limit",
        "overrides": "overrides",
        "scope": "scope",
        "match": "match",
        "period": "period",
        "thresholds": "thresholds_pct",
        "on_hard_limit": "on_hard_limit",
        "mode": "mode",
        "failure": "failure",
        "notify": "notify",
    }
    return [name for name, attr in fields.items() if getattr(old, attr) != getattr(new, attr)]


def _limit_of(rule: BudgetRule, entity: str) -> int:
    return rule.overrides.get(entity, rule.default_limit)


async def _candidates(
    store: ScriptStore, org: str, rule: BudgetRule, now_month: str, last_month: str
) -> list[str]:
    if rule.scope == "org":
        return [org]
    floor = min([rule.default_limit, *rule.overrides.values()])
    lowest = min(rule.thresholds_pct or (100,))
    at_least = floor * min(lowest, 100) / 100
    found: set[str] = set(rule.overrides)
    for month in (now_month, last_month):
        names: Any = await store.client.zrangebyscore(
            keys.report_rank(org, rule.scope, f"m:{month}"), at_least, "+inf"
        )
        found.update(str(n) for n in names)
    return sorted(found)


async def _shadow_denies(store: ScriptStore, org: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    start = "-"
    while True:
        rows: Any = await store.client.xrange(keys.events(org), min=start, max="+", count=1000)
        for _, fields in rows:
            if fields.get("type") == "shadow_would_deny":
                name = fields.get("budget", "")
                counts[name] = counts.get(name, 0) + 1
        if len(rows) < 1000:
            return counts
        start = streams.after(str(rows[-1][0]))


async def _budget_plan(
    engine: Engine,
    store: ScriptStore,
    org: str,
    old: BudgetRule | None,
    new: BudgetRule,
    months: tuple[str, str],
    shadow: dict[str, int],
    analyse: bool = True,
) -> BudgetPlan:
    change = "added" if old is None else "changed"
    plan = BudgetPlan(
        budget=new.name,
        scope=new.scope,
        change=change,
        what=["budget"] if old is None else _what(old, new),
        limits=_limits(old, new),
        mode=new.mode,
        blocks=new.mode == "enforce" and new.on_hard_limit == "block",
        shadow_would_deny=shadow.get(new.name, 0) if new.mode == "shadow" else None,
    )
    over: list[Over] = []
    crossing: list[Crossing] = []
    candidates = await _candidates(store, org, new, *months) if analyse else []
    policy = engine.policy(org)
    # The rule's counter of each candidate (none where its match does not cover the entity):
    # a team's or a tag's, which no subject's budgets view can name, as much as a user's.
    applied = [a for e in candidates if (a := entity_budget(policy, new, e)) is not None]
    for c in await counters.read(engine, policy, applied, engine.clock.now()):
        entity, used, limit = c.applied.entity, c.spent + c.held, c.applied.limit
        if used > limit:
            over.append(
                Over(entity=entity, used_micros=used, limit_micros=limit, over_micros=used - limit)
            )
        old_limit = _limit_of(old, entity) if old is not None else None
        passed = [t for t in new.thresholds_pct if used * 100 >= t * limit]
        before = (
            [t for t in old.thresholds_pct if used * 100 >= t * old_limit]
            if old is not None and old_limit
            else []
        )
        fresh = [t for t in passed if t not in before]
        if fresh:
            crossing.append(
                Crossing(
                    entity=entity, used_micros=used, limit_micros=limit, threshold_pct=max(fresh)
                )
            )
    over.sort(key=lambda o: -o.over_micros)
    return msgspec.structs.replace(plan, over=over, crossing=crossing)


async def plan(
    store: ScriptStore,
    clock: Clock,
    old: PolicySet | None,
    new: PolicySet,
    orgs: set[str] | None = None,
    analyse: bool = True,
) -> Plan:
    """The plan of replacing ``old`` by ``new`` (``orgs``: only these orgs; ``analyse``: also
    read the entities' counters, for the over-limit and threshold lists)."""
    registry = PolicyRegistry(Path("."))
    registry.replace(new)
    engine = Engine(registry, store, clock, Metrics())
    old_orgs: dict[str, OrgPolicy] = dict(old.orgs) if old else {}
    names = sorted(set(old_orgs) | set(new.orgs))
    out: list[OrgPlan] = []
    for org in names:
        if orgs is not None and org not in orgs:
            continue
        before, after = old_orgs.get(org), new.orgs.get(org)
        if after is None:
            assert before is not None
            out.append(
                OrgPlan(
                    org=org,
                    change="removed",
                    budgets=[
                        BudgetPlan(
                            budget=r.name,
                            scope=r.scope,
                            change="removed",
                            what=["budget"],
                            limits=_limits(r, None),
                            mode=r.mode,
                            blocks=False,
                        )
                        for r in before.budgets
                    ],
                )
            )
            continue
        if analyse:
            # Candidates come from the aggregates: fold what the follower has not reached yet.
            await follower.follow(store, org, after.tz)
        now = clock.now().astimezone(after.tz)
        last = now.replace(day=1) - timedelta(days=1)
        months = (f"{now:%Y-%m}", f"{last:%Y-%m}")
        shadow = (
            await _shadow_denies(store, org)
            if analyse and any(r.mode == "shadow" for r in after.budgets)
            else {}
        )
        old_rules = {r.name: r for r in before.budgets} if before else {}
        plans: list[BudgetPlan] = []
        for rule in after.budgets:
            prior = old_rules.pop(rule.name, None)
            if prior is not None and prior == rule and rule.mode != "shadow":
                continue
            plans.append(
                await _budget_plan(engine, store, org, prior, rule, months, shadow, analyse)
            )
        for rule in old_rules.values():
            plans.append(
                BudgetPlan(
                    budget=rule.name,
                    scope=rule.scope,
                    change="removed",
                    what=["budget"],
                    limits=_limits(rule, None),
                    mode=rule.mode,
                    blocks=False,
                )
            )
        changed = [p for p in plans if p.change != "changed" or p.what]
        out.append(
            OrgPlan(
                org=org,
                change="added" if before is None else ("changed" if changed else "unchanged"),
                budgets=plans,
            )
        )
    blocked = [
        (o.org, b.budget, len(b.over)) for o in out for b in o.budgets if b.blocks and b.over
    ]
    counts = {
        kind: sum(
            1 for o in out for b in o.budgets if b.change == kind and (b.what or kind != "changed")
        )
        for kind in ("added", "removed", "changed")
    }
    summary = (
        f"{counts['added']} budget(s) added, {counts['removed']} removed, "
        f"{counts['changed']} changed"
        + (
            "; would block " + ", ".join(f"{n} in {o}/{b}" for o, b, n in blocked)
            if blocked
            else ""
        )
    )
    return Plan(orgs=out, would_block=bool(blocked), summary=summary)
