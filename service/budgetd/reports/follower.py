"""The reports follower: reads each org's ledger stream after its own cursor and folds the new
entries into aggregates (reports/fold.py), cursor and increments in one script, so a batch is
applied exactly once however many replicas follow at the same time. The hot-path scripts do not
know it exists; reports lag the ledger by at most one follower interval."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from redis.commands.core import AsyncScript

from budgetd.engine import Engine
from budgetd.reports.fold import Increments, fold
from budgetd.store import keys
from budgetd.store.scripted import ScriptStore

DAY_MS = 86_400_000
KEEP_MS = {"d": 400 * DAY_MS, "m": 800 * DAY_MS}
"""How long a day's (a month's) aggregates stay after their last entry."""
BATCH = 2000


@cache
def _source() -> str:
    return (resources.files("budgetd.reports") / "scripts" / "apply.lua").read_text("utf-8")


_scripts: dict[int, AsyncScript] = {}


def _script(store: ScriptStore) -> AsyncScript:
    script = _scripts.get(id(store.client))
    if script is None:
        script = _scripts[id(store.client)] = store.client.register_script(_source())
    return script


def _next_id(entry_id: str) -> str:
    ms, seq = entry_id.split("-")
    return f"{ms}-{int(seq) + 1}"


def _call(org: str, increments: Increments, last_ms: int) -> tuple[list[str], str]:
    keys_: list[str] = []
    groups: list[dict[str, Any]] = []
    for (view, bucket), rows in increments.items():
        keys_ += [keys.report_rows(org, view, bucket), keys.report_rank(org, view, bucket)]
        groups.append({"x": last_ms + KEEP_MS[bucket[0]], "e": [[e, *t] for e, t in rows.items()]})
    return keys_, msgspec.json.encode(groups).decode()


async def follow(store: ScriptStore, org: str, tz: ZoneInfo, batch: int = BATCH) -> int:
    """Fold every ledger entry past the cursor into the aggregates; returns how many this call
    applied (entries another follower applied first are not counted)."""
    script = _script(store)
    applied = 0
    while True:
        cursor = str(await store.client.get(keys.report_cursor(org)) or "")
        rows: Any = await store.client.xrange(
            keys.ledger(org), min=_next_id(cursor) if cursor else "-", max="+", count=batch
        )
        if not rows:
            return applied
        entries = [(str(i), f) for i, f in rows]  # redis-py made each a dict already
        last = entries[-1][0]
        keys_, groups = _call(org, fold(entries, tz), int(last.split("-")[0]))
        done = await script(keys=[keys.report_cursor(org), *keys_], args=[cursor, last, groups])
        if done:
            applied += len(entries)
        if len(rows) < batch:
            return applied


async def lag(store: ScriptStore, org: str) -> int:
    """Ledger entries not yet in the aggregates (0: reports are current)."""
    cursor = str(await store.client.get(keys.report_cursor(org)) or "")
    if not cursor:
        return int(await store.client.xlen(keys.ledger(org)))
    rows: Any = await store.client.xrange(
        keys.ledger(org), min=_next_id(cursor), max="+", count=10_000
    )
    return len(rows)


async def follow_all(engine: Engine, store: ScriptStore, orgs: list[str]) -> int:
    """One follower pass over every org (the scheduler's ``reports`` job)."""
    applied = 0
    for org in orgs:
        applied += await follow(store, org, engine.policy(org).tz)
    return applied
