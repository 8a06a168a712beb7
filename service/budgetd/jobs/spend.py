"""Spend history from the org's ledger: who spent what, when. Forecasts, spike alerts and period
summaries read it; enforcement never does (counters are the truth for limits)."""

from __future__ import annotations

from collections import Counter, defaultdict

import msgspec

from budgetd import ledger
from budgetd.store.scripted import ScriptStore


class Spend(msgspec.Struct, frozen=True, kw_only=True):
    at_ms: int
    cost: int
    user: str
    feature: str
    model: str
    overrun: bool


def parse(entry_id: str, fields: dict[str, str]) -> Spend:
    user, feature = ledger.subject(fields)
    return Spend(
        at_ms=int(entry_id.split("-", maxsplit=1)[0]),
        cost=int(fields.get("cost_micros", "0")),
        user=user,
        feature=feature,
        model=fields.get("model", ""),
        overrun=fields.get("overrun") == "1",
    )


async def since(
    store: ScriptStore, org: str, since_ms: int, until_ms: int | None = None
) -> list[Spend]:
    """The org's usage in [since, until), oldest first: commits and records. Adjustments are
    an admin's corrections, not a rate of use, so forecasts, spikes and top lists skip them
    (the counters, which the limits and the org's period total read, include them)."""
    return [
        parse(i, f)
        async for i, f in ledger.entries(store, org, since_ms, until_ms)
        if f.get("kind") != "adjustment"
    ]


def entity_of(spend: Spend, scope: str, org: str) -> str:
    """The entity a ledger entry counts for in a budget of ``scope`` ('' when none, and for the
    scopes a ledger entry does not name yet: team)."""
    if scope == "org":
        return org
    if scope == "user":
        return spend.user
    return spend.feature if scope == "feature" else ""


def totals_by(spends: list[Spend], attribute: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for s in spends:
        key = getattr(s, attribute)
        if key:
            out[key] += s.cost
    return out


def hourly(
    spends: list[Spend], scope: str, org: str, now_ms: int, hours: int
) -> dict[str, list[int]]:
    """Per entity: spend in each of the last ``hours`` hours, oldest first; the last slot is
    the hour ending now."""
    out: dict[str, list[int]] = defaultdict(lambda: [0] * hours)
    for s in spends:
        age = (now_ms - s.at_ms) // 3_600_000
        if 0 <= age < hours:
            entity = entity_of(s, scope, org)
            if entity:
                out[entity][hours - 1 - age] += s.cost
    return dict(out)
