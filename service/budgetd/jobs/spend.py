"""Spend history from the org's ledger: who spent what, when. Forecasts, spike alerts and period
summaries read it; enforcement never does (counters are the truth for limits)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator

import msgspec

from budgetd import attribution, ledger
from budgetd.pacing import paced
from budgetd.policy.model import BudgetRule, OrgPolicy
from budgetd.policy.resolve import Subject, applied_budgets
from budgetd.store.scripted import ScriptStore


class Spend(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One ledger entry as the jobs read it. Not tracked by the garbage collector (a month close
    holds ~100,000: every full collection walked them); its fields make no cycles."""

    at_ms: int
    cost: int
    user: str
    feature: str
    model: str
    overrun: bool
    teams: tuple[str, ...] = ()
    key: str = ""
    tags: tuple[str, ...] = ()
    session: str = ""


def parse(entry_id: str, fields: dict[str, str]) -> Spend:
    who = attribution.of_entry(fields)
    return Spend(
        at_ms=int(entry_id.split("-", maxsplit=1)[0]),
        cost=int(fields.get("cost_micros", "0")),
        user=who.user,
        feature=who.feature,
        model=fields.get("model", ""),
        overrun=fields.get("overrun") == "1",
        teams=who.teams,
        key=who.key,
        tags=who.tags,
        session=who.session,
    )


async def since(
    store: ScriptStore, org: str, since_ms: int, until_ms: int | None = None
) -> list[Spend]:
    """The org's usage in [since, until), oldest first: commits and records. Adjustments are
    an admin's corrections, not a rate of use, so forecasts, spikes and top lists skip them
    (the counters, which the limits and the org's period total read, include them)."""
    return [s async for s in stream(store, org, since_ms, until_ms)]


async def stream(
    store: ScriptStore, org: str, since_ms: int, until_ms: int | None = None
) -> AsyncIterator[Spend]:
    """``since``'s records one at a time, a page of the ledger read at a time: for a pass over
    a month, which need not hold ~100,000 records at once."""
    async for i, f in ledger.entries(store, org, since_ms, until_ms):
        if f.get("kind") != "adjustment":
            yield parse(i, f)


def entities_of(spend: Spend, rule: BudgetRule, policy: OrgPolicy) -> tuple[str, ...]:
    """The entities whose counters of ``rule`` a ledger entry counted for: resolved as the
    reserve resolves them (the rule's feature filter, globs and overrides' teams), from the
    teams, key, tags and session the entry recorded. Several for a user in several teams or
    a call with several matching tags; none when the rule did not apply."""
    subject = Subject(
        org=policy.org,
        user=spend.user or None,
        feature=spend.feature or None,
        key=spend.key or None,
        tags=spend.tags,
        teams=spend.teams,
        session=spend.session or None,
    )
    return tuple(applied.entity for applied in applied_budgets(policy, rule, subject))


async def hourly(
    spends: list[Spend], rule: BudgetRule, policy: OrgPolicy, now_ms: int, hours: int
) -> dict[str, list[int]]:
    """Per entity: spend in each of the last ``hours`` hours, oldest first; the last slot is
    the hour ending now. Resolving a day's entries takes 100s of ms: paced."""
    out: dict[str, list[int]] = defaultdict(lambda: [0] * hours)
    async for s in paced(spends):
        age = (now_ms - s.at_ms) // 3_600_000
        if 0 <= age < hours:
            for entity in entities_of(s, rule, policy):
                out[entity][hours - 1 - age] += s.cost
    return dict(out)
