"""The event stream keeps every event its delivery group has not acknowledged, whatever the
stream's length; acknowledged ones are trimmed once they are older than the keep time."""

from __future__ import annotations

from datetime import timedelta

from budgetd.store import keys
from budgetd.store.events import EventQueue
from budgetd.store.scripted import ScriptStore


async def test_trim_drops_acknowledged_events_only(store: ScriptStore) -> None:
    queue = EventQueue(store)
    await queue.ensure_group("acme")
    for i in range(10):
        assert await queue.emit("acme", f"e{i}", timedelta(hours=1), {"type": "x", "n": str(i)})
    first = await queue.read_new("acme", "c1", 3)  # e0..e2 read, e0 and e2 acknowledged
    await queue.ack("acme", first[0])
    await queue.ack("acme", first[2])
    # e1 waits for a retry; e3..e9 were never read.
    await queue.trim_acknowledged("acme", keep_ms=0)
    left = sorted(e.id for e in await queue.recent("acme", 100))
    assert left == sorted(f"e{i}" for i in range(1, 10))  # e2 is kept behind pending e1
    # Everything read and acknowledged: all of it may go, nothing unread does.
    for event in await queue.read_new("acme", "c1", 100) + [first[1]]:
        await queue.ack("acme", event)
    await queue.emit("acme", "e10", timedelta(hours=1), {"type": "x"})
    assert await queue.trim_acknowledged("acme", keep_ms=0) == 9
    assert [e.id for e in await queue.recent("acme", 100)] == ["e10"]
    # Acknowledged but younger than the keep time: kept.
    (last,) = await queue.read_new("acme", "c1", 100)
    await queue.ack("acme", last)
    assert await queue.trim_acknowledged("acme", keep_ms=3_600_000) == 0
    assert await store.client.xlen(keys.events("acme")) == 1
