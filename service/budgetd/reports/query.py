"""Reports read from the aggregates the follower keeps (reports/follower.py), never from the
ledger: a range is covered by whole months where it can and by days at its edges, and top-N
comes from each bucket's rank sorted set."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import msgspec

from budgetd.reports.fold import METRICS, View
from budgetd.store import keys
from budgetd.store.scripted import ScriptStore

MAX_DAYS = 400
"""Longest range a report covers (day aggregates are kept this long)."""


class Row(msgspec.Struct, frozen=True, kw_only=True):
    """Totals of one entity (or one day and model) over the report's range, and what they
    say per call. ``avg_input_tokens`` counts every prompt token, cached or not."""

    entity: str
    day: str | None = None
    cost_micros: int
    calls: int
    input_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    cache_read_tokens: int
    output_tokens: int
    cost_per_call_micros: int
    avg_input_tokens: float
    avg_output_tokens: float
    cache_hit_rate: float
    """Cache reads ÷ all prompt tokens (input + cache writes + cache reads)."""


class Report(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    by: str
    since: date
    until: date
    """Exclusive."""
    entities: int | None
    """How many entities had spend in the range (more than ``rows`` when ``top`` cut it);
    None for a top-N over several buckets (counting would mean building their union)."""
    total: Row
    rows: list[Row]


def row(entity: str, t: list[int], day: str | None = None) -> Row:
    cost, calls, inp, w5, w1, cr, out = t
    prompt = inp + w5 + w1 + cr
    return Row(
        entity=entity,
        day=day,
        cost_micros=cost,
        calls=calls,
        input_tokens=inp,
        cache_write_5m_tokens=w5,
        cache_write_1h_tokens=w1,
        cache_read_tokens=cr,
        output_tokens=out,
        cost_per_call_micros=(cost + calls // 2) // calls if calls else 0,
        avg_input_tokens=round(prompt / calls, 1) if calls else 0.0,
        avg_output_tokens=round(out / calls, 1) if calls else 0.0,
        cache_hit_rate=round(cr / prompt, 4) if prompt else 0.0,
    )


def cover(since: date, until: date, tomorrow: date) -> Iterator[str]:
    """Buckets that cover [since, until) exactly: a whole month as ``m:YYYY-MM``, other days
    as ``d:YYYY-MM-DD``. Days from ``tomorrow`` on hold nothing yet, so this month so far is
    its month bucket too (one bucket, not a union of days)."""
    day = since
    while day < until:
        next_month = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
        if day.day == 1 and (next_month <= until or tomorrow <= until):
            yield f"m:{day:%Y-%m}"
            day = next_month
        else:
            yield f"d:{day:%Y-%m-%d}"
            day += timedelta(days=1)


def _unpack(value: str) -> list[int]:
    return [int(v) for v in value.split()]


def _add(into: dict[str, list[int]], entity: str, totals: list[int]) -> None:
    have = into.get(entity)
    if have is None:
        into[entity] = totals
    else:
        for i, v in enumerate(totals):
            have[i] += v


def _check_range(since: date, until: date) -> None:
    if until <= since:
        raise ValueError("until must be after since")
    if (until - since).days > MAX_DAYS:
        raise ValueError(f"a report covers at most {MAX_DAYS} days")


async def _all_rows(
    store: ScriptStore, org: str, view: View, bkts: list[str]
) -> dict[str, list[int]]:
    pipe = store.client.pipeline(transaction=False)
    for b in bkts:
        pipe.hgetall(keys.report_rows(org, view, b))
    totals: dict[str, list[int]] = {}
    for rows in await pipe.execute():
        for entity, value in rows.items():
            _add(totals, entity, _unpack(value))
    return totals


async def _top_union(client: Any, ranks: list[str], top: int) -> list[str]:
    """The ``top`` entities by spend summed over several buckets, without building the union
    (Fagin's threshold algorithm): read each bucket's ranking a page at a time, look every newly
    seen entity up in all buckets, and stop once the ``top``-th best sum is at least the sum of
    the scores at the current depth, which no entity not yet seen can beat (spend is never
    negative in these views). Skewed spend (a few heavy users) stops after a page or two."""
    page = max(2 * top, 200)
    totals: dict[str, float] = {}
    depth = 0
    while True:
        pipe = client.pipeline(transaction=False)
        for rank in ranks:
            pipe.zrevrange(rank, depth, depth + page - 1, withscores=True)
        pages = await pipe.execute()
        fresh = list({name for rows in pages for name, _ in rows if name not in totals})
        if fresh:
            pipe = client.pipeline(transaction=False)
            for rank in ranks:
                pipe.zmscore(rank, fresh)
            scores = await pipe.execute()
            for i, name in enumerate(fresh):
                totals[name] = sum(s[i] or 0.0 for s in scores)
        depth += page
        threshold = sum(rows[-1][1] for rows in pages if len(rows) == page)
        best = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
        if all(len(rows) < page for rows in pages) or (
            len(best) >= top and best[top - 1][1] >= threshold
        ):
            return [name for name, _ in best[:top]]


async def _top(
    store: ScriptStore, org: str, view: View, bkts: list[str], top: int
) -> tuple[int | None, dict[str, list[int]]]:
    """(how many entities, or None when the range spans several buckets and counting them
    would mean building their union; the top ``top`` by spend with their totals)."""
    client = store.client
    count: int | None = None
    if len(bkts) == 1:
        rank = keys.report_rank(org, view, bkts[0])
        pipe = client.pipeline(transaction=False)
        pipe.zcard(rank)
        pipe.zrevrange(rank, 0, top - 1)
        count, names = await pipe.execute()
    else:
        names = await _top_union(client, [keys.report_rank(org, view, b) for b in bkts], top)
    totals: dict[str, list[int]] = {}
    if names:
        pipe = client.pipeline(transaction=False)
        for b in bkts:
            pipe.hmget(keys.report_rows(org, view, b), names)
        for values in await pipe.execute():
            for entity, value in zip(names, values, strict=True):
                if value is not None:
                    _add(totals, entity, _unpack(value))
    return count, totals


async def usage(
    store: ScriptStore,
    org: str,
    by: View,
    since: date,
    until: date,
    top: int | None = None,
    sort: str = "cost_micros",
    tomorrow: date | None = None,
) -> Report:
    """Spend, calls and tokens per model, user, feature or session over [since, until);
    ``top``: only the biggest spenders. ``tomorrow``: the org's first day with no entries
    yet (its today + 1), which lets a month so far be read as its month bucket."""
    _check_range(since, until)
    bkts = list(cover(since, until, tomorrow or until))
    models = await _all_rows(store, org, "model", bkts)
    total = [0] * len(METRICS)
    for t in models.values():
        for i, v in enumerate(t):
            total[i] += v
    count: int | None
    if by == "model":
        count, totals = len(models), models
    elif top is None:
        totals = await _all_rows(store, org, by, bkts)
        count = len(totals)
    else:
        count, totals = await _top(store, org, by, bkts, top)
    rows = [row(e, t) for e, t in totals.items()]
    rows.sort(key=lambda r: (-_sort_value(r, sort), r.entity))
    if top is not None:
        rows = rows[:top]
    return Report(
        org=org,
        by=by,
        since=since,
        until=until,
        entities=count,
        total=row("total", total),
        rows=rows,
    )


SORTABLE = tuple(f for f in Row.__struct_fields__ if f not in ("entity", "day"))


def _sort_value(row: Row, sort: str) -> float:
    value: Any = getattr(row, sort)
    return float(value)


async def daily(store: ScriptStore, org: str, since: date, until: date) -> Report:
    """Spend, calls and tokens per day and model over [since, until), oldest day first."""
    _check_range(since, until)
    days = [since + timedelta(days=i) for i in range((until - since).days)]
    pipe = store.client.pipeline(transaction=False)
    for d in days:
        pipe.hgetall(keys.report_rows(org, "model", f"d:{d:%Y-%m-%d}"))
    rows: list[Row] = []
    total = [0] * len(METRICS)
    for d, found in zip(days, await pipe.execute(), strict=True):
        for model in sorted(found):
            t = _unpack(found[model])
            for i, v in enumerate(t):
                total[i] += v
            rows.append(row(model, t, day=d.isoformat()))
    return Report(
        org=org,
        by="day",
        since=since,
        until=until,
        entities=len(rows),
        total=row("total", total),
        rows=rows,
    )


def csv_text(rows: list[Any]) -> str:
    """Rows (report Structs) as CSV: one column per field, numbers as plain numbers, a list
    (thresholds) as space-separated numbers."""
    plain: list[dict[str, Any]] = msgspec.to_builtins(rows)
    buffer = io.StringIO()
    if plain:
        writer = csv.DictWriter(buffer, fieldnames=list(plain[0]), lineterminator="\n")
        writer.writeheader()
        for row in plain:
            writer.writerow(
                {k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()}
            )
    return buffer.getvalue()
