"""Reports from the follower's aggregates, on a real Redis and a Redis Cluster: every figure
equals what the engine charged and the usage it was given, exactly once however many
followers run at the same time."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

from budgetd.engine import Engine
from budgetd.reports import follower, query
from budgetd.reports.budgets import budgets
from budgetd.store import keys
from budgetd.store.scripted import ScriptStore
from tests.commandstats import calls as ran
from tests.reports.conftest import (
    HAIKU,
    SONNET,
    Call,
    real_range,
    record,
    this_month,
    traffic,
)


def expected(calls: list[Call], key: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(lambda: [0] * 7)
    for c in calls:
        name = getattr(c, key)
        if not name:
            continue
        u = c.usage
        five, hour = u.cache_writes
        row = [c.cost, 1, u.uncached_input, five, hour, u.cache_read, u.output]
        out[name] = [a + b for a, b in zip(out[name], row, strict=True)]
    return dict(out)


def figures(report: query.Report) -> dict[str, list[int]]:
    return {
        r.entity: [
            r.cost_micros,
            r.calls,
            r.input_tokens,
            r.cache_write_5m_tokens,
            r.cache_write_1h_tokens,
            r.cache_read_tokens,
            r.output_tokens,
        ]
        for r in report.rows
    }


async def test_reports_equal_what_was_charged(report_engine: Engine) -> None:
    calls = await traffic(report_engine)
    store = report_engine.store
    assert await follower.lag(store, "acme") == len(calls)
    assert await follower.follow(store, "acme", report_engine.policy("acme").tz) == len(calls)
    assert await follower.lag(store, "acme") == 0
    since, until = real_range()
    for view in ("model", "user", "feature", "session"):
        report = await query.usage(store, "acme", view, since, until)  # type: ignore[arg-type]
        assert figures(report) == expected(calls, view), view
        assert report.entities == len(expected(calls, view))
    total = (await query.usage(store, "acme", "model", since, until)).total
    assert total.cost_micros == sum(c.cost for c in calls)
    assert total.calls == len(calls)
    prompt = sum(c.usage.prompt_tokens for c in calls)
    assert total.cache_hit_rate == round(sum(c.usage.cache_read for c in calls) / prompt, 4)
    assert total.avg_input_tokens == round(prompt / len(calls), 1)
    assert total.cost_per_call_micros == round(total.cost_micros / len(calls))


async def test_top_n_and_sort(report_engine: Engine) -> None:
    calls = await traffic(report_engine)
    await follower.follow(report_engine.store, "acme", report_engine.policy("acme").tz)
    since, until = real_range()
    spend = {u: t[0] for u, t in expected(calls, "user").items()}
    first, tomorrow = this_month()
    top = await query.usage(
        report_engine.store, "acme", "user", first, tomorrow, top=2, tomorrow=tomorrow
    )
    assert top.entities == 3
    assert [r.entity for r in top.rows] == sorted(spend, key=lambda u: -spend[u])[:2]
    # Over several day buckets: the same ranking, and no count (that would need the union).
    days = await query.usage(report_engine.store, "acme", "user", since, until, top=2)
    assert days.entities is None
    assert [r.entity for r in days.rows] == [r.entity for r in top.rows]
    by_calls = await query.usage(report_engine.store, "acme", "feature", since, until, sort="calls")
    assert [r.calls for r in by_calls.rows] == sorted(
        (r.calls for r in by_calls.rows), reverse=True
    )


async def test_daily_by_model(report_engine: Engine) -> None:
    calls = await traffic(report_engine)
    await follower.follow(report_engine.store, "acme", report_engine.policy("acme").tz)
    since, until = real_range()
    daily = await query.daily(report_engine.store, "acme", since, until)
    by_model = expected(calls, "model")
    assert {r.entity for r in daily.rows} == set(by_model)
    assert {r.entity: r.cost_micros for r in daily.rows} == {m: t[0] for m, t in by_model.items()}
    assert daily.total.cost_micros == sum(c.cost for c in calls)


async def test_concurrent_followers_apply_each_entry_once(report_engine: Engine) -> None:
    calls = await traffic(report_engine, 40)
    tz = report_engine.policy("acme").tz
    store = report_engine.store
    applied = await asyncio.gather(*(follower.follow(store, "acme", tz, batch=7) for _ in range(4)))
    assert sum(applied) == len(calls)
    since, until = real_range()
    report = await query.usage(store, "acme", "user", since, until)
    assert figures(report) == expected(calls, "user")


async def test_followers_pick_up_where_they_left(report_engine: Engine) -> None:
    calls = await traffic(report_engine, 12)
    tz = report_engine.policy("acme").tz
    await follower.follow(report_engine.store, "acme", tz)
    await follower.follow(report_engine.store, "acme", tz)  # nothing new: applies nothing
    since, until = real_range()
    report = await query.usage(report_engine.store, "acme", "model", since, until)
    assert report.total.cost_micros == sum(c.cost for c in calls)
    assert SONNET in figures(report)


async def test_budgets_against_actual(report_engine: Engine) -> None:
    calls = await traffic(report_engine, 12)
    await follower.follow(report_engine.store, "acme", report_engine.policy("acme").tz)
    report = await budgets(report_engine, report_engine.store, "acme")  # type: ignore[arg-type]
    rows = {(r.budget, r.entity): r for r in report.rows}
    org = rows[("org-month", "acme")]
    assert org.spent_micros == sum(c.cost for c in calls)
    assert org.limit_micros == 100_000_000
    assert org.projected_micros is not None and org.projected_micros >= org.spent_micros
    for user in ("alice", "bob", "carol"):
        assert rows[("user-day", user)].spent_micros == sum(c.cost for c in calls if c.user == user)
    assert rows[("user-day", "alice")].limit_micros == 2_000_000


async def test_top_over_several_buckets_equals_the_union(real_store: ScriptStore) -> None:
    """Top-N over several days (the threshold algorithm) equals ranking the full union."""
    rng = random.Random(5)
    client = real_store.client
    ranks = [keys.report_rank("acme", "user", f"d:2026-10-{d:02d}") for d in (3, 4, 5, 6)]
    for rank in ranks:
        users = rng.sample(range(3000), 1500)
        await client.zadd(
            rank,
            {
                f"u{u}": int(rng.paretovariate(1.1) * 1000) if u % 3 else rng.randrange(50)
                for u in users
            },
        )
    union: dict[str, float] = defaultdict(float)
    for rank in ranks:
        for name, score in await client.zrange(rank, 0, -1, withscores=True):
            union[name] += score
    for top in (1, 5, 20, 300):
        got = await query._top_union(client, ranks, top)
        want = sorted(union.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        assert [union[n] for n in got] == [score for _, score in want], top


async def spread(engine: Engine, calls: int) -> list[Call]:
    """Recorded calls of as many users and sessions as calls: every entry its own report rows."""
    return [
        await record(engine, i, f"u{i:04d}", ["chat", "search"][i % 2], HAIKU, f"run{i:04d}")
        for i in range(calls)
    ]


async def test_a_follower_pass_goes_in_small_steps(report_engine: Engine) -> None:
    """A follower pass used to read, fold and apply 2,000 ledger entries at a time: ~50 ms of
    the replica's event loop, and one Lua script of ~10 ms in Redis, during which no reserve
    or commit went on (docs/performance.md, "Follower stalls"). Now at most ``follower.SLICE``
    (50) entries are read and folded between two turns of the loop, and a script applies about
    ``follower.ROWS`` (1,000) report rows (at most that plus one slice's: ~1,200 here), and the
    aggregates are still exactly what was charged: 600 entries with a user and a session each
    (~2,400 rows) take >= 12 reads and >= 2 applies."""
    calls = await spread(report_engine, 600)
    store = report_engine.store
    reads, applies = await ran(store, "xrange"), await ran(store, "evalsha")
    assert await follower.follow(store, "acme", report_engine.policy("acme").tz) == len(calls)
    assert await ran(store, "xrange") - reads >= 600 // 50
    assert await ran(store, "evalsha") - applies >= 2400 // 1200
    since, until = real_range()
    for view in ("model", "user", "feature", "session"):
        report = await query.usage(store, "acme", view, since, until)  # type: ignore[arg-type]
        assert figures(report) == expected(calls, view), view
