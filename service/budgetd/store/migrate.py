"""``budgetd store migrate``: fold an org's counters from the layout before issue 13 into
today's (docs/decisions.md, "Redis work per call (issue 13)": the upgrade).

The old keys are found with SCAN (here, not in a script), each is mapped to where it goes, and
one script (migrate.lua) folds them all, rewrites the plans of open holds, and deletes the old
keys, atomically. Running it again finds nothing left to fold."""

from __future__ import annotations

from typing import Any

import msgspec

from budgetd.expiry import CounterExpiry
from budgetd.store import keys
from budgetd.store.base import BucketSlot, BudgetLabel, BudgetSlot
from budgetd.store.plan import plan_tokens
from budgetd.store.scripted import ScriptStore

_OLD_KINDS = {"requests": "requests", "input_tokens": "input", "output_tokens": "output"}
_MODES = {"block", "warn", "shadow"}


class Migrated(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    counters: int
    buckets: int
    plans: int
    skipped: list[str]
    """Old keys left alone: a rolling budget no longer in the policy (its width is unknown)."""


def _old_plan_budget(org: str, b: dict[str, Any]) -> BudgetSlot:
    field = keys.budget_field(str(b["n"]), str(b["en"]))
    period = str(b["p"])
    mode = str(b["m"]) if b["m"] in _MODES else "block"
    label = BudgetLabel(
        name=str(b["n"]),
        scope=str(b["s"]),
        entity=str(b["en"]),
        period=period,
        period_end_ms=int(b.get("pe") or 0),
    )
    thresholds = tuple(int(t) for t in b.get("th") or ())
    if b.get("w"):
        width_ms = int(b["w"])
        return BudgetSlot(
            field=field,
            counter_key=keys.rolling_prefix(org, width_ms // 1000),
            held_key=keys.rolling_held(org),
            limit=int(b["l"]),
            mode=mode,  # type: ignore[arg-type]
            thresholds_pct=thresholds,
            label=label,
            expire_at_ms=int(b["x"]),
            sub_bucket_ms=width_ms,
            sub_bucket=int(period[1:]),
            expire_after_ms=int(b["xo"]),
        )
    key = keys.counters(org, period)
    return BudgetSlot(
        field=field,
        counter_key=key,
        held_key=key,
        limit=int(b["l"]),
        mode=mode,  # type: ignore[arg-type]
        thresholds_pct=thresholds,
        label=label,
        expire_at_ms=int(b["x"]),
    )


def new_plan(org: str, old: str) -> str:
    """An open hold's JSON plan (the old layout) as today's plan tokens, tab-joined."""
    plan = msgspec.json.decode(old)
    buckets = [
        BucketSlot(
            key=str(t["k"]).rsplit(":", 1)[0],  # tb:<rule>:<entity>:<kind> → tb:<rule>:<entity>
            per_minute=int(t["r"]),
            capacity=int(t["c"]),
            amount=int(t["n"]),
            enforce=True,
            kind=t["q"],
        )
        for t in plan["t"]
    ]
    amounts = {t.kind: t.amount for t in buckets}
    budgets = [_old_plan_budget(org, b) for b in plan["b"]]
    tokens = plan_tokens(
        int(plan["a"]), amounts.get("input", 0), amounts.get("output", 0), budgets, buckets
    )
    return "\t".join(tokens)


async def migrate(store: ScriptStore, org: str, expiry: CounterExpiry) -> Migrated:
    """Fold ``org``'s old-layout counters, buckets and open holds into today's layout."""
    client: Any = store.client
    tag = keys.tag(org)
    counter_args: list[str | int] = []
    counter_keys: list[str] = []
    skipped: list[str] = []
    for pattern in (f"{tag}:b:*", f"{tag}:h:*"):
        async for raw in client.scan_iter(match=pattern, count=1000):
            old = str(raw)
            spent_at = expiry.current(old)
            if "#" not in spent_at:
                skipped.append(old)
                continue
            held_at = expiry.current(old, held=True)
            spent_key, _, spent_field = spent_at.partition("#")
            held_key, _, held_field = held_at.partition("#")
            counter_keys.append(old)
            counter_args += [
                spent_key,
                spent_field,
                held_key,
                held_field,
                expiry(spent_at) or 0,
            ]
    bucket_keys: list[str] = []
    bucket_args: list[str | int] = []
    async for raw in client.scan_iter(match=f"{tag}:tb:*", count=1000):
        old = str(raw)
        new, _, kind = old.rpartition(":")
        if kind in _OLD_KINDS and await client.hexists(old, "t"):
            bucket_keys.append(old)
            bucket_args += [new, _OLD_KINDS[kind]]
    plan_keys: list[str] = []
    plan_args: list[str | int] = []
    for rid in await client.zrange(keys.holds(org), 0, -1):
        rkey = keys.reservation(org, str(rid))
        state, plan = await client.hmget(rkey, ["st", "plan"])
        if state == "held" and plan and str(plan).startswith("{"):
            plan_keys.append(rkey)
            plan_args += [str(plan), new_plan(org, str(plan))]
    if not (counter_keys or bucket_keys or plan_keys):
        return Migrated(org=org, counters=0, buckets=0, plans=0, skipped=skipped)
    folded, buckets, plans = await store.run_script(
        "migrate",
        [*counter_keys, *bucket_keys, *plan_keys],
        [
            len(counter_keys),
            len(bucket_keys),
            len(plan_keys),
            *counter_args,
            *bucket_args,
            *plan_args,
        ],
    )
    return Migrated(
        org=org, counters=int(folded), buckets=int(buckets), plans=int(plans), skipped=skipped
    )
