"""The dead-letter list and the ledger archive hash are bounded: the list keeps the newest
dead letters, the archive drops the sums of counters past their expiry by design."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from budgetd import ledger
from budgetd.expiry import counter_expiry
from budgetd.periods import window
from budgetd.policy.loader import parse_policy
from budgetd.pricing_table import load_pricing
from budgetd.store import keys
from budgetd.store.events import EventQueue
from budgetd.store.scripted import ScriptStore
from tests.conftest import TEST_PRICING


async def test_the_dead_letter_list_keeps_the_newest(store: ScriptStore) -> None:
    queue = EventQueue(store, dead_letters_kept=3)
    for i in range(5):
        await queue.dead_letter("acme", {"event_id": f"e{i}"})
    assert [r["event_id"] for r in await queue.dead_letters("acme", 10)] == ["e4", "e3", "e2"]


async def test_the_archive_drops_counters_past_their_expiry(store: ScriptStore) -> None:
    text = (
        "org: acme\ntimezone: UTC\nbudgets:\n  - {name: d, scope: org, limit_usd: 1, period: day}\n"
    )
    policy = parse_policy(text, "acme.yaml", load_pricing(TEST_PRICING))
    now = datetime.fromtimestamp(await store.server_time(), UTC)
    spec = policy.budgets[0].period
    old_id = window(spec, policy.tz, now - timedelta(days=10)).charge_id
    old = keys.charged(keys.counters("acme", old_id), "d|acme|s")
    # An archive sum written before issue 13's layout names the old key.
    legacy = keys.legacy_period_counter("acme", "d", "acme", old_id)
    live_id = window(spec, policy.tz, now).charge_id
    live = keys.charged(keys.counters("acme", live_id), "d|acme|s")
    await store.client.hset(keys.ledger_archive("acme"), mapping={old: "5", legacy: "3", live: "7"})
    assert await ledger.prune_archive(store, "acme", counter_expiry(policy)) == 2
    assert await store.client.hgetall(keys.ledger_archive("acme")) == {live: "7"}
