"""The reports follower: reads each org's ledger stream after its own cursor and folds the new
entries into aggregates (reports/fold.py), cursor and increments in one script, so a batch is
applied exactly once however many replicas follow at the same time. The hot-path scripts do not
know it exists; reports lag the ledger by at most one follower interval.

It runs beside the hot path, in the replica's event loop and in the org's Redis, so it goes in
small steps: a pass used to read, fold and apply 2,000 entries at a time, ~50 ms of the loop and
~10 ms of Redis (one script) during which no reserve or commit went on (docs/performance.md,
"Follower stalls")."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from redis.commands.core import AsyncScript

from budgetd.engine import Engine
from budgetd.reports.fold import Increments, add_into, fold
from budgetd.store import keys, streams
from budgetd.store.scripted import ScriptStore

DAY_MS = 86_400_000
KEEP_MS = {"d": 400 * DAY_MS, "m": 800 * DAY_MS}
"""How long a day's (a month's) aggregates stay after their last entry."""
SLICE = 50
"""Entries read and folded between two turns of the event loop (folding costs 15-30 µs an
entry: ~1-1.5 ms of the loop)."""
ROWS = 1000
"""A step stops taking slices once its sums fill this many report rows, so an apply script
writes at most this plus one slice's (~3 commands a row: a few ms of Redis) however spread the
entries are (2,000 entries of distinct users and sessions make ~8,000 rows)."""
BATCH = 2000
"""Entries one step covers at most, however few rows they make."""


@cache
def _source() -> str:
    return (resources.files("budgetd.reports") / "scripts" / "apply.lua").read_text("utf-8")


_scripts: dict[int, AsyncScript] = {}


def _script(store: ScriptStore) -> AsyncScript:
    script = _scripts.get(id(store.client))
    if script is None:
        script = _scripts[id(store.client)] = store.client.register_script(_source())
    return script


def _call(org: str, increments: Increments, last_ms: int) -> tuple[list[str], str]:
    keys_: list[str] = []
    groups: list[dict[str, Any]] = []
    for (view, bucket), rows in increments.items():
        keys_ += [keys.report_rows(org, view, bucket), keys.report_rank(org, view, bucket)]
        groups.append({"x": last_ms + KEEP_MS[bucket[0]], "e": [[e, *t] for e, t in rows.items()]})
    return keys_, msgspec.json.encode(groups).decode()


async def follow(
    store: ScriptStore,
    org: str,
    tz: ZoneInfo,
    *,
    batch: int = BATCH,
    rows: int = ROWS,
    slice_: int = SLICE,
) -> int:
    """Fold every ledger entry past the cursor into the aggregates; returns how many this call
    applied (entries another follower applied first are not counted)."""
    script = _script(store)
    applied = 0
    while True:
        cursor = str(await store.client.get(keys.report_cursor(org)) or "")
        step = await _read_step(store, org, tz, cursor, batch, rows, slice_)
        if step is None:
            return applied
        increments, last, count, more = step
        keys_, groups = _call(org, increments, int(last.split("-")[0]))
        if await script(keys=[keys.report_cursor(org), *keys_], args=[cursor, last, groups]):
            applied += count
        if not more:
            return applied


async def _read_step(
    store: ScriptStore, org: str, tz: ZoneInfo, cursor: str, batch: int, rows: int, slice_: int
) -> tuple[Increments, str, int, bool] | None:
    """The sums of the entries after ``cursor``, read and folded ``slice_`` at a time (each read
    a turn of the event loop) until ``batch`` entries or ``rows`` report rows: (sums, id of the
    last entry, entries, whether the ledger may hold more); None when there is nothing new."""
    increments: Increments = {}
    last, count, held = cursor, 0, 0
    while count < batch and held < rows:
        want = min(slice_, batch - count)
        got: Any = await store.client.xrange(
            keys.ledger(org), min=streams.after(last) if last else "-", max="+", count=want
        )
        if got:
            entries = [(str(i), f) for i, f in got]  # redis-py made each a dict already
            held = add_into(increments, fold(entries, tz))
            count, last = count + len(entries), entries[-1][0]
        if len(got) < want:
            return (increments, last, count, False) if count else None
    return increments, last, count, True


async def lag(store: ScriptStore, org: str) -> int:
    """Ledger entries not yet in the aggregates (0: reports are current)."""
    cursor = str(await store.client.get(keys.report_cursor(org)) or "")
    if not cursor:
        return int(await store.client.xlen(keys.ledger(org)))
    rows: Any = await store.client.xrange(
        keys.ledger(org), min=streams.after(cursor), max="+", count=10_000
    )
    return len(rows)


async def follow_all(engine: Engine, store: ScriptStore, orgs: list[str]) -> int:
    """One follower pass over every org (the scheduler's ``reports`` job)."""
    applied = 0
    for org in orgs:
        applied += await follow(store, org, engine.policy(org).tz)
    return applied
