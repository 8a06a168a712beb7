"""The org's ledger stream: export it, trim it (export first), and reconcile it against the
counters. Conservation: every counter's ``spent`` equals the sum of the ledger entries charged
to it, and every ``held`` equals the sum of the open holds on it."""

from __future__ import annotations

import asyncio
import csv
import io
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

from budgetd import attribution
from budgetd.expiry import CounterExpiry, current
from budgetd.pacing import STEP
from budgetd.store import keys, streams
from budgetd.store.plan import held_fields
from budgetd.store.scripted import ScriptStore

Format = Literal["jsonl", "csv"]
CSV_COLUMNS = (
    "id",
    "kind",
    "reservation_id",
    "cost_micros",
    "held_micros",
    "overrun",
    "late",
    "model",
    "pricing_version",
    "user",
    "feature",
    "teams",
    "key",
    "tags",
    "usage",
    "charged",
    "at_ms",
)


class Difference(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    """The counter: ``<hash>#<field>`` (store/keys.py, ``charged``)."""
    field: Literal["spent", "held"]
    counter: int
    expected: int


class Reconciliation(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    entries: int
    counters: int
    open_holds: int
    differences: list[Difference]
    ledger_starts_ms: int | None
    """The oldest entry still in the stream; older ones were trimmed into the archive."""
    expired: list[str] = msgspec.field(default_factory=list)
    """Counters gone after their expiry by design (period end + 8 days) while ledger entries
    charged to them stay: expired, not compared."""

    @property
    def ok(self) -> bool:
        return not self.differences


def bound_ms(when: datetime | None) -> int | None:
    """An export or trim bound as epoch milliseconds; a time without a zone is UTC.

    ``ValueError`` before 1970: ledger ids are epoch milliseconds, and Redis refuses a negative
    stream id (which would break an export already streaming)."""
    if when is None:
        return None
    ms = int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)
    if ms < 0:
        raise ValueError(f"{when.isoformat()} is before 1970-01-01, where the ledger starts")
    return ms


async def has_ledger(store: ScriptStore, org: str) -> bool:
    """Whether ``org`` has ledger entries here, or had them before a trim."""
    found: int = await store.client.exists(keys.ledger(org), keys.ledger_archive(org))
    return found > 0


async def entries(
    store: ScriptStore, org: str, since_ms: int = 0, until_ms: int | None = None, page: int = STEP
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """Ledger entries with stream id in [since, until), oldest first, a page at a time, with a
    turn of the event loop between two pages: the jobs that read a month of entries (period
    close, retention's export) do per-entry Python work on each, in the serving loop."""
    if until_ms is not None and until_ms <= since_ms:
        return  # an empty range (``until`` at the epoch would be the stream id "-1-…")
    start = f"{since_ms}-0"
    end = "+" if until_ms is None else f"{until_ms - 1}-18446744073709551615"
    while True:
        rows: Any = await store.client.xrange(keys.ledger(org), min=start, max=end, count=page)
        for entry_id, fields in rows:
            yield str(entry_id), dict(fields)
        if len(rows) < page:
            return
        await asyncio.sleep(0)  # (an embedded store answers without one)
        start = streams.after(str(rows[-1][0]))


def _flat(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    who = attribution.of_entry(fields)
    return {
        "id": entry_id,
        **fields,
        "user": who.user,
        "feature": who.feature,
        "teams": list(who.teams),
        "key": who.key,
        "tags": list(who.tags),
    }


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "teams": ",".join(row["teams"]), "tags": ",".join(row["tags"])}


async def export(
    store: ScriptStore, org: str, fmt: Format, since_ms: int = 0, until_ms: int | None = None
) -> AsyncIterator[str]:
    """The ledger as JSON lines or CSV text, chunk by chunk."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        yield buffer.getvalue()
    async for entry_id, fields in entries(store, org, since_ms, until_ms):
        row = _flat(entry_id, fields)
        if fmt == "jsonl":
            yield msgspec.json.encode(row).decode() + "\n"
        else:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writerow(_csv_row(row))
            yield buffer.getvalue()


TRIM_BATCH = 100
"""Entries one trim script drops: ~2 ms of Redis (1,000 held it for ~20 ms, in which no
reserve or commit of any org ran: docs/performance.md, "Job stalls")."""
PRUNE_PAGE = 200
"""Archive fields looked at (HSCAN) and dropped (HDEL) a step, a turn of the loop between."""


async def trim(store: ScriptStore, org: str, before_ms: int, batch: int = TRIM_BATCH) -> int:
    """Drop entries older than ``before_ms`` (export them first); returns how many went.

    What they charged moves to the org's archive hash in the same script, so reconcile stays
    exact. ``before_ms`` must be in the past: entries are appended at the current time."""
    removed = 0
    while True:
        count = int(
            await store.run_script(
                "trim", [keys.ledger(org), keys.ledger_archive(org)], [f"{before_ms}-0", batch]
            )
        )
        removed += count
        if count < batch:
            return removed


async def prune_archive(store: ScriptStore, org: str, expiry: CounterExpiry) -> int:
    """Drop the archive's sums for counters past their expiry by design: reconcile no longer
    compares those counters, so the sums are dead weight (the hash grew by every counter of
    every trimmed period, forever). Returns how many fields went."""
    archive_key = keys.ledger_archive(org)
    now_ms = int(await store.server_time() * 1000)
    dropped, cursor = 0, 0
    # A page at a time (months of retention leave 100,000s of fields: one HKEYS and one HDEL
    # held Redis ~100 ms each). A field present throughout the scan is seen at least once; a
    # field seen twice is dropped once (HDEL counts what it removed). One that a trim adds
    # meanwhile and the scan misses waits for the next run.
    while True:
        cursor, page = await store.client.hscan(archive_key, cursor, count=PRUNE_PAGE)
        gone = [f for f in map(str, page) if (due := expiry(f)) is not None and due <= now_ms]
        if gone:
            dropped += int(await store.client.hdel(archive_key, *gone))
        if not int(cursor):
            return dropped
        await asyncio.sleep(0)  # (an embedded store answers without one)


async def oldest_ms(store: ScriptStore, org: str) -> int | None:
    """When the oldest entry still in the stream was appended (None: the stream is empty)."""
    rows: Any = await store.client.xrange(keys.ledger(org), count=1)
    return int(str(rows[0][0]).split("-")[0]) if rows else None


async def archive(store: ScriptStore, org: str, before_ms: int, path: Path) -> int:
    """Export the entries older than ``before_ms`` to ``path`` (JSON lines), then trim them;
    returns how many were trimmed. Nothing is trimmed unless the export is on disk: it is
    written beside ``path``, fsynced, and renamed into place first.

    ``before_ms`` must not be ahead of Redis time: entries are appended at Redis time, so a
    cut-off in the future could trim an entry that arrived after the export."""
    now_ms = int(await store.server_time() * 1000)
    if before_ms > now_ms:
        raise ValueError("the cut-off must be in the past (by Redis time)")
    partial = path.with_name(path.name + ".part")
    out = await asyncio.to_thread(partial.open, "w", encoding="utf-8")
    try:
        page: list[str] = []
        async for line in export(store, org, "jsonl", 0, before_ms):
            page.append(line)
            if len(page) >= 1000:
                await asyncio.to_thread(out.writelines, page)
                page = []
        await asyncio.to_thread(out.writelines, page)
        await asyncio.to_thread(out.flush)
        await asyncio.to_thread(os.fsync, out.fileno())
    finally:
        await asyncio.to_thread(out.close)
    await asyncio.to_thread(partial.replace, path)
    return await trim(store, org, before_ms)


class _SessionLedger:
    """What reconcile expects of session counter hashes (issue 14). Such a hash slides: it is
    gone once idle (expired, not compared: its spend was checked while it lived), and an id
    used again starts a new hash with another generation (its ``g``: the Redis ms it was
    created at). A hash's ``spent`` is the sum of the ledger entries charged to it at or after
    its generation; its ``held`` that of the open holds made on that generation (a hold on an
    earlier one frees nothing: lib.lua, ``void_hold``). Archive sums cannot be told apart by
    generation: not compared (trimmed entries are older than any live session's start, unless
    ``idle`` outlasts the trim age)."""

    def __init__(self) -> None:
        self.spent: dict[str, list[tuple[int, int]]] = {}
        self.held: list[tuple[str, int | None, int]] = []
        self.seen: set[str] = set()

    def expect(
        self, key: str, values: dict[str, str], spent: Counter[str], held: Counter[str]
    ) -> None:
        """Adds to ``spent`` and ``held`` what the live hash ``key`` must hold."""
        generation = int(values.get("g", 0))
        for field in values:
            counter = keys.charged(key, str(field))
            self.seen.add(counter)
            if counter in self.spent:
                spent[counter] += sum(c for at, c in self.spent[counter] if at >= generation)
        for counter, gen, micros in self.held:
            if counter.partition("#")[0] == key and gen in (None, generation):
                held[counter] += micros

    def gone(self) -> list[str]:
        """Session counters the ledger charged whose hash is gone (or has no such field)."""
        return [c for c in self.spent if c not in self.seen]


async def _open_holds(
    store: ScriptStore, org: str, now_named: Callable[[str, bool], str], sessions: _SessionLedger
) -> tuple[Counter[str], int]:
    """The held amount each counter must have (a session hash's: into ``sessions``), and how
    many holds are open."""
    session_prefix = keys.session_counters(org, "")
    held: Counter[str] = Counter()
    open_ids: Any = await store.client.zrange(keys.holds(org), 0, -1)
    open_holds = 0
    for rid in open_ids:
        state, plan, sg = await store.client.hmget(keys.reservation(org, rid), ["st", "plan", "sg"])
        if state != "held" or plan is None:
            continue
        open_holds += 1
        generations = iter(str(sg or "").split())
        for key, field, micros in held_fields(str(plan)):
            legacy = field == "held"  # a plan stored before the layout: old key, field held
            if key.startswith(session_prefix) and not legacy:
                generation = next(generations, None)
                gen = None if generation is None else int(generation)
                sessions.held.append((keys.charged(key, field), gen, micros))
            else:
                held[now_named(key, True) if legacy else keys.charged(key, field)] += micros
    return held, open_holds


async def reconcile(
    store: ScriptStore, org: str, expiry: CounterExpiry | None = None
) -> Reconciliation:
    """Conservation, counter by counter (a counter: ``<hash>#<field>``, store/keys.py). A
    counter that is gone is a difference, unless ``expiry`` (the org's policy) says it has
    reached its expiry by design (Redis time): then it is listed as expired, not compared.
    Without ``expiry`` every gone counter is one. Ledger entries and archive sums from before
    issue 13's layout name old keys: they are read as the counters those were migrated into
    (a rolling one only with ``expiry``, which knows the sub-bucket widths)."""

    def now_named(counter: str, held: bool = False) -> str:
        if expiry is not None:
            return expiry.current(counter, held)
        return current(org, counter, {}, held)

    session_prefix = keys.session_counters(org, "")
    archived = await store.client.hgetall(keys.ledger_archive(org))
    spent: Counter[str] = Counter()
    for k, v in archived.items():
        if not str(k).startswith(session_prefix):  # see _SessionLedger
            spent[now_named(str(k))] += int(v)
    sessions = _SessionLedger()
    count, first_ms = 0, None
    async for entry_id, fields in entries(store, org):
        count += 1
        first_ms = first_ms if first_ms is not None else int(entry_id.split("-")[0])
        at_ms = int(fields.get("at_ms", entry_id.split("-")[0]))
        for counter in fields.get("charged", "").split():
            cost = int(fields.get("cost_micros", "0"))
            if counter.startswith(session_prefix):
                sessions.spent.setdefault(counter, []).append((at_ms, cost))
            else:
                spent[now_named(counter)] += cost
    held, open_holds = await _open_holds(store, org, now_named, sessions)
    differences: list[Difference] = []
    counters = 0
    async for key in store.client.scan_iter(match=f"{keys.tag(org)}:c:*", count=1000):
        values: Any = await store.client.hgetall(key)
        if str(key).startswith(session_prefix):
            sessions.expect(str(key), values, spent, held)
        for field, raw in values.items():
            kind: Literal["spent", "held"] | None = (
                "spent" if field.endswith("|s") else "held" if field.endswith("|h") else None
            )
            if kind is None:
                continue  # the hash's expiry sentinel
            counters += 1
            counter = keys.charged(str(key), str(field))
            actual = int(raw)
            expected = (spent if kind == "spent" else held).pop(counter, 0)
            if actual != expected:
                differences.append(
                    Difference(key=counter, field=kind, counter=actual, expected=expected)
                )
    # Ledger entries or holds pointing at counters that no longer exist (expired, or lost).
    now_ms = int(await store.server_time() * 1000)
    expired: list[str] = []
    expired.extend(sessions.gone())
    for counter, value in spent.items():
        due = expiry(counter) if expiry is not None else None
        if due is not None and due <= now_ms:
            expired.append(counter)
        elif value:
            differences.append(Difference(key=counter, field="spent", counter=0, expected=value))
    for counter, value in held.items():
        if value:
            differences.append(Difference(key=counter, field="held", counter=0, expected=value))
    return Reconciliation(
        org=org,
        entries=count,
        counters=counters,
        open_holds=open_holds,
        differences=differences,
        ledger_starts_ms=first_ms,
        expired=sorted(expired),
    )
