"""The plan: a reserve's budgets and buckets as the scripts read them (lib.lua's header says
the layout). The engine packs each budget's tokens once per cached slot; a call joins them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from budgetd.store.base import BucketSlot, BudgetSlot

_MODE = {"block": "b", "warn": "w", "shadow": "s"}


def budget_tokens(b: BudgetSlot) -> tuple[str, ...]:
    """One budget's part of a plan (the same for every call of its entity in its window)."""
    label_end = b.label.period_end_ms if b.label else 0
    head = (
        b.field,
        b.label.scope if b.label and b.label.scope else "-",
        str(b.limit),
        _MODE[b.mode],
        ",".join(str(t) for t in b.thresholds_pct) or "-",
        str(label_end),
    )
    if b.sub_bucket_ms:
        return (
            *head,
            "R",
            b.counter_key,
            str(b.sub_bucket_ms),
            str(b.expire_after_ms),
            str(b.sub_bucket),
            b.held_key,
            str(b.expire_at_ms),
        )
    if b.slide_ms:
        return (*head, "S", b.counter_key, str(b.slide_ms))
    return (*head, "C", b.counter_key, str(b.expire_at_ms))


def bucket_tokens(buckets: Sequence[BucketSlot]) -> list[str]:
    """Bucket hashes of a plan: consecutive slots of one hash (one rule, one entity) form a
    group, so each hash is read and written once; kinds keep the slots' order."""
    out: list[str] = []
    groups: list[list[BucketSlot]] = []
    for t in buckets:
        if groups and groups[-1][0].key == t.key:
            groups[-1].append(t)
        else:
            groups.append([t])
    out.append(str(len(groups)))
    for group in groups:
        out += [group[0].key, str(len(group))]
        for t in group:
            out += [t.kind, str(t.per_minute), str(t.capacity), "1" if t.enforce else "0"]
    return out


def plan_tokens(
    amount: int,
    input_tokens: int,
    output_tokens: int,
    budgets: Sequence[BudgetSlot],
    buckets: Sequence[BucketSlot],
) -> list[str]:
    """A whole plan: header, budgets (their packed tokens), bucket hashes."""
    bucket_part = bucket_tokens(buckets)
    out = [str(amount), str(input_tokens), str(output_tokens), str(len(budgets)), bucket_part[0]]
    for b in budgets:
        out += b.packed or budget_tokens(b)
    out += bucket_part[1:]
    return out


def held_fields(plan: str) -> Iterable[tuple[str, str, int]]:
    """(hash, field, micros) of each hold a stored plan makes. A plan stored before issue 13's
    layout (JSON, open holds of an upgrade) names its held keys, field ``held``."""
    if plan.startswith("{"):
        decoded = msgspec.json.decode(plan)
        for entry in decoded["b"]:
            yield str(entry["h"]), "held", int(decoded["a"])
        return
    tokens = plan.split("\t")
    amount, nb = int(tokens[0]), int(tokens[3])
    i = 5
    for _ in range(nb):
        field, kind = tokens[i], tokens[i + 6]
        if kind == "R":
            yield tokens[i + 11], f"{field}|h", amount
            i += 13
        else:
            yield tokens[i + 7], f"{field}|h", amount
            i += 9
