"""The scheduler's jobs run in the event loop that serves reserves and commits: each gives the
loop a turn at least every few hundred ledger entries, and reads Redis in bounded steps
(docs/performance.md, "Job stalls"). At a large org a period close resolved a month of entries
against each rule without a turn (0.4 s), and a forecast read thousands of counters in one
script (and failed with ~18,000). Checked without timing: by counting the work done between
two turns of the loop, and the counters a status script reads."""

from __future__ import annotations

import asyncio
import gc
import heapq
import inspect
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from budgetd import ledger
from budgetd.clock import FrozenClock
from budgetd.engine import Engine
from budgetd.expiry import counter_expiry
from budgetd.jobs import delivery, period_close, spend, spike
from budgetd.jobs import forecast as forecast_module
from budgetd.jobs.forecast import forecast
from budgetd.jobs.period_close import close_periods
from budgetd.jobs.retention import apply_retention
from budgetd.jobs.spike import detect_spikes
from budgetd.periods import window
from budgetd.policy.loader import parse_policy
from budgetd.pricing_table import load_pricing
from budgetd.store import keys
from budgetd.store.events import EventQueue
from budgetd.store.scripted import ScriptStore
from tests.conftest import TEST_PRICING

POLICY = """
org: acme
timezone: UTC
defaults:
  spike_factor: 3
budgets:
  - {name: org-day, scope: org, limit_usd: 1000, period: day}
  - {name: user-day, scope: user, limit_usd: 1000, period: day}
"""
NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
BOUND = 250
"""Entries of work allowed between two turns of the loop (the jobs step at 100)."""


class Steps:
    """Counts calls of the functions wrapped with :meth:`count` and, from a task beside the job,
    the most calls made between two turns of the event loop."""

    def __init__(self) -> None:
        self.done = 0
        self.most = 0
        self._last = 0

    def count(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.done += 1
            return function(*args, **kwargs)

        return counted

    @contextmanager
    def watching(self) -> Iterator[None]:
        stop = False

        async def turns() -> None:
            while not stop:
                self._turn()
                await asyncio.sleep(0)

        task = asyncio.get_running_loop().create_task(turns())
        try:
            yield
        finally:
            stop = True
            self._turn()
            task.cancel()

    def _turn(self) -> None:
        self.most = max(self.most, self.done - self._last)
        self._last = self.done


@pytest.fixture
def setup(
    make_engine: Callable[..., Engine], store: ScriptStore, clock: FrozenClock
) -> tuple[Engine, EventQueue]:
    clock.set(NOON)
    return make_engine(POLICY), EventQueue(store)


async def _ledger(store: ScriptStore, since: datetime, n: int, users: int) -> None:
    """``n`` entries of ``users`` users over the hour after ``since``."""
    step_ms = 3_600_000 // n
    start_ms = int(since.timestamp() * 1000)
    pipe = store.client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(
            keys.ledger("acme"),
            {
                "kind": "record",
                "cost_micros": "1000",
                "user": f"u{i % users:05d}",
                "feature": "chat",
                "model": "claude-haiku-test",
                "overrun": "0",
            },
            id=f"{start_ms + i * step_ms}-0",
        )
    await pipe.execute()


async def test_a_period_close_resolves_entries_a_few_at_a_time(
    setup: tuple[Engine, EventQueue], store: ScriptStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, queue = setup
    await _ledger(store, NOON - timedelta(hours=3), 1200, 50)
    steps = Steps()
    monkeypatch.setattr(spend, "parse", steps.count(spend.parse))
    monkeypatch.setattr(period_close, "entities_of", steps.count(period_close.entities_of))
    with steps.watching():
        assert await close_periods(engine, queue, "acme", "day", NOON + timedelta(hours=12)) == 2
    assert steps.done == 1200 * 3  # parsed once, resolved for each rule
    assert steps.most <= BOUND  # 1,200 entries, resolved for a rule without a turn, before


async def test_a_spike_check_resolves_entries_a_few_at_a_time(
    setup: tuple[Engine, EventQueue], store: ScriptStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, queue = setup
    await _ledger(store, NOON - timedelta(hours=3), 1200, 50)
    steps = Steps()
    monkeypatch.setattr(spend, "parse", steps.count(spend.parse))
    monkeypatch.setattr(spend, "entities_of", steps.count(spend.entities_of))
    with steps.watching():
        await detect_spikes(engine, queue, "acme", NOON)
    assert steps.done == 1200 * 3
    assert steps.most <= BOUND


async def test_a_forecast_reads_thousands_of_counters_in_bounded_scripts(
    setup: tuple[Engine, EventQueue], store: ScriptStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3,000 users spent in the last hour: their counters were read in one status script (tens
    of ms of Redis; with several thousand more it failed: Lua's unpack limit); now 200 a
    script."""
    engine, queue = setup
    await _ledger(store, NOON - timedelta(minutes=60), 3000, 3000)
    steps = Steps()
    monkeypatch.setattr(spend, "parse", steps.count(spend.parse))
    monkeypatch.setattr(forecast_module, "entities_of", steps.count(forecast_module.entities_of))
    reads: list[int] = []
    status = engine.store.status

    async def counted_status(budgets: Any, buckets: Any) -> Any:
        reads.append(len(budgets))
        return await status(budgets, buckets)

    monkeypatch.setattr(engine.store, "status", counted_status)
    with steps.watching():
        assert await forecast(engine, queue, "acme", NOON) == 0  # $3 an hour of $1,000
    assert sum(reads) == 3001 and max(reads) <= 200  # the users' and the org's
    assert steps.done == 3000 * 3
    assert steps.most <= BOUND


async def test_retention_exports_and_trims_in_small_steps(
    setup: tuple[Engine, EventQueue],
    store: ScriptStore,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A retention run at a large org trims tens of thousands of entries: the trim script took
    1,000 a call (~20 ms of Redis); now ``ledger.TRIM_BATCH`` (100), each adding what its
    entries charged to the archive in the same script, so the archive stays exact."""
    await _ledger(store, NOON - timedelta(days=40), 350, 10)
    trimmed: list[int] = []
    run_script = store.run_script

    async def counted(name: str, keys_: Any, args: Any, *more: Any, **kw: Any) -> Any:
        out = await run_script(name, keys_, args, *more, **kw)
        if name == "trim":
            trimmed.append(int(out))
        return out

    monkeypatch.setattr(store, "run_script", counted)
    steps = Steps()
    monkeypatch.setattr(ledger, "_flat", steps.count(ledger._flat))
    with steps.watching():
        assert await apply_retention(store, "acme", 30 * 86_400_000, tmp_path) == 350
    assert steps.done == 350 and steps.most <= BOUND
    assert max(trimmed) <= 100 and sum(trimmed) == 350
    assert await store.client.hgetall(keys.ledger_archive("acme")) == {}  # charged nothing


async def test_the_archive_is_pruned_in_small_steps(
    store: ScriptStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archive keeps a sum per counter of every trimmed period: hundreds of thousands of
    fields after months. Pruning read them in one HKEYS and dropped them in one HDEL (~100 ms
    of Redis each) and checked every one between two turns of the loop (seconds); now a scan
    page at a time."""
    text = (
        "org: acme\ntimezone: UTC\nbudgets:\n  - {name: d, scope: user, limit_usd: 1, period: day}"
    )
    policy = parse_policy(text + "\n", "acme.yaml", load_pricing(TEST_PRICING))
    now = datetime.fromtimestamp(await store.server_time(), UTC)
    spec = policy.budgets[0].period
    old_id = window(spec, policy.tz, now - timedelta(days=40)).charge_id
    live_id = window(spec, policy.tz, now).charge_id
    archive = keys.ledger_archive("acme")
    old = {keys.charged(keys.counters("acme", old_id), f"d|u{i:04d}|s"): "5" for i in range(1200)}
    live = {keys.charged(keys.counters("acme", live_id), f"d|u{i:04d}|s"): "7" for i in range(300)}
    await store.client.hset(archive, mapping={**old, **live})
    deleted: list[int] = []
    hdel = store.client.hdel

    async def counted(key: str, *fields: str) -> int:
        deleted.append(len(fields))
        return int(await hdel(key, *fields))

    monkeypatch.setattr(store.client, "hdel", counted)
    steps = Steps()
    expiry = steps.count(counter_expiry(policy))
    with steps.watching():
        assert await ledger.prune_archive(store, "acme", expiry) == 1200  # type: ignore[arg-type]
    assert await store.client.hgetall(archive) == live
    assert steps.done >= 1500 and steps.most <= BOUND
    assert max(deleted) <= 500


async def test_delivery_settles_a_few_events_at_a_time(
    make_engine: Callable[..., Engine],
    store: ScriptStore,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delivery pass settled its whole batch (100 events) at once: every event's next Redis
    command ready in the same turn of the loop (35-65 ms at a large org); now at most
    ``DeliveryConfig.concurrency`` (8) events are in flight."""
    clock.set(NOON)
    engine = make_engine(
        POLICY.replace(
            "defaults:\n", "channels:\n  ops: {log: debug}\ndefaults:\n  notify: [ops]\n"
        )
    )
    queue = EventQueue(store)
    for i in range(40):
        fields = {"type": "spike", "budget": "org-day", "scope": "org", "entity": "acme"}
        assert await queue.emit("acme", f"e{i}", timedelta(hours=1), fields)
    in_flight, most = 0, 0
    real_send = delivery.send

    async def counted_send(*args: Any) -> Any:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.001)  # a receiver's answer takes a while
        in_flight -= 1
        return await real_send(*args)

    monkeypatch.setattr(delivery, "send", counted_send)
    deliverer = delivery.Deliverer(queue, engine.registry, engine.metrics, "test")
    try:
        assert await deliverer.run_once() == 40
    finally:
        await deliverer.close()
    assert 1 < most <= 8


def test_spend_records_stay_out_of_the_garbage_collectors_walk() -> None:
    """A month close holds ~100,000 of them: each full collection meanwhile walked them all
    (6-8 ms a collection at a large org). They hold strings and numbers only: no cycles."""
    record = spend.parse("1-0", {"cost_micros": "5", "user": "ann", "teams": "a b"})
    assert not gc.is_tracked(record)


class _CountedItems(dict[str, list[int]]):
    """``hourly``'s answer, counting the entities a spike check goes through."""

    steps: Steps

    def items(self) -> Any:
        for item in super().items():
            self.steps.done += 1
            yield item


async def test_a_spike_check_compares_entities_a_few_at_a_time(
    setup: tuple[Engine, EventQueue], store: ScriptStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After resolving, a spike check compares every entity's 25 hourly sums: ~18,000 of them
    at a large org in one turn of the loop (11-15 ms); now ``pacing.STEP`` at a time."""
    engine, queue = setup
    await _ledger(store, NOON - timedelta(minutes=60), 1200, 600)
    steps = Steps()
    real_hourly = spike.hourly

    def counted_hourly(*args: Any) -> Any:
        def counted(series: dict[str, list[int]]) -> _CountedItems:
            out = _CountedItems(series)
            out.steps = steps
            return out

        got = real_hourly(*args)
        if not inspect.isawaitable(got):
            return counted(got)

        async def later() -> _CountedItems:
            return counted(await got)

        return later()

    monkeypatch.setattr(spike, "hourly", counted_hourly)
    with steps.watching():
        await detect_spikes(engine, queue, "acme", NOON)
    assert steps.done == 1 + 600  # the org, and each user
    assert steps.most <= BOUND


async def test_a_period_close_ranks_its_top_lists_a_thousand_at_a_time(
    setup: tuple[Engine, EventQueue], store: ScriptStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A month's top users are picked from ~100,000 totals: all at once (``most_common``),
    ~5.6 ms; now 1,000 totals between two turns of the loop, and the lists are what
    ``most_common`` gives."""
    engine, queue = setup
    await _ledger(store, NOON - timedelta(hours=3), 3000, 3000)
    steps = Steps()
    nlargest = heapq.nlargest

    def counted_nlargest(n: int, iterable: Any, key: Any = None) -> Any:
        def counted() -> Any:
            for item in iterable:
                steps.done += 1
                yield item

        return nlargest(n, counted(), key=key)

    monkeypatch.setattr(heapq, "nlargest", counted_nlargest)
    with steps.watching():
        assert await close_periods(engine, queue, "acme", "day", NOON + timedelta(hours=12)) == 2
    assert steps.done >= 3000 * 2  # the users' totals, of the user rule and of the top users
    assert steps.most <= 1000 + 5
    closes = {e["budget"]: e for e in await _events(store)}
    top = [[f"u{i:05d}", 1000] for i in range(5)]  # all equal: the first counted first
    assert msgspec.json.decode(closes["user-day"]["top_entities"]) == top
    assert msgspec.json.decode(closes["user-day"]["top_users"]) == top
    assert closes["user-day"]["used_micros"] == str(3000 * 1000)


async def _events(store: ScriptStore) -> list[dict[str, str]]:
    return [fields for _, fields in await store.client.xrange(keys.events("acme"))]


async def test_a_period_close_holds_a_few_ledger_records_at_a_time(
    setup: tuple[Engine, EventQueue], store: ScriptStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A month close kept every record of the month (~115,000 at a large org) in a list, and
    freed them all at once when it returned: one 25 ms stop. Now it tallies each rule as the
    records stream past, and frees them as it goes."""
    engine, queue = setup
    await _ledger(store, NOON - timedelta(hours=3), 1200, 50)

    class Tracked(spend.Spend, weakref=True, gc=True):
        pass

    alive, most = 0, 0
    parse = spend.parse

    def tracked_parse(entry_id: str, fields: dict[str, str]) -> spend.Spend:
        nonlocal alive, most
        record = parse(entry_id, fields)
        out = Tracked(**{f: getattr(record, f) for f in record.__struct_fields__})
        alive += 1
        most = max(most, alive)

        def freed() -> None:
            nonlocal alive
            alive -= 1

        weakref.finalize(out, freed)
        return out

    monkeypatch.setattr(spend, "parse", tracked_parse)
    assert await close_periods(engine, queue, "acme", "day", NOON + timedelta(hours=12)) == 2
    closes = {e["budget"]: e for e in await _events(store)}
    assert closes["user-day"]["used_micros"] == str(1200 * 1000)
    assert most <= 2 * 100  # a page of the ledger (100), not the 1,200 of the day
