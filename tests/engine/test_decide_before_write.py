"""The scripts' rule (lib.lua, docs/decisions.md): a script decides everything, including every
operation that can fail, before its first write. Redis keeps the writes a failing script made
before its error, so a script that broke the rule would leave a half-done step that retries
repeat (issue 9, item 3: commit voided the hold, then failed in charge()'s HINCRBY).

Checked here without knowing the scripts: an org's state is built through the engine, then every
key of the org is corrupted in turn (a wrong type; each integer field made non-numeric or near
2^63), and each operation is run on the corrupted state. It must either succeed, or fail having
changed nothing: every key of the org is compared (value and expiry) before and after. Keys are
found by the org's hash tag, so the check holds whatever keys and scripts the store uses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from budgetd import adjustments, ledger
from budgetd.clock import FrozenClock
from budgetd.contract import AdjustmentRequest, CommitRequest, Grant, ReserveRequest, UsageRequest
from budgetd.engine import Engine
from budgetd.store import keys
from budgetd.store.events import EventQueue
from budgetd.store.scripted import ScriptStore
from budgetd.usage import Usage

POLICY = """
org: acme
timezone: UTC
defaults: {hold_ttl_s: 60, thresholds_pct: [1, 50]}
budgets:
  - {name: org-day, scope: org, limit_usd: 100, period: day}
  - {name: user-hour, scope: user, limit_usd: 10, period: 1h}
rate_limits:
  - name: rates
    scope: user
    requests_per_minute: 1000
    input_tokens_per_minute: 1000000
    output_tokens_per_minute: 1000000
"""
ORG = "acme"
NEAR_2_63 = "9223372036854775800"
Snapshot = dict[str, tuple[bytes, object, int]]


def reserve(rid: str) -> ReserveRequest:
    return ReserveRequest(
        org=ORG,
        user="bob",
        model="claude-haiku-test",
        input_tokens=1000,
        max_tokens=50_000,
        reservation_id=rid,
    )


USAGE = Usage(input_tokens=900, output_tokens=60_000)


async def org_keys(store: ScriptStore) -> list[str]:
    prefix = keys.org_prefix(ORG)
    client = store.client
    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(prefix)
        found: Any = await client.execute_command(
            "CLUSTER", "GETKEYSINSLOT", key_slot(prefix.encode()), 10_000, target_nodes=node
        )
        return sorted(str(k) for k in found)
    return sorted([str(k) async for k in client.scan_iter(match=prefix + "*", count=1000)])


async def content(store: ScriptStore, key: str) -> object:
    """A key's value, canonically (DUMP's bytes follow a hash table's internal order, which
    Redis's incremental rehashing changes without any write)."""
    client = store.client
    kind = str(await client.type(key))
    value: Any
    if kind == "hash":
        value = sorted((await client.hgetall(key)).items())
    elif kind == "zset":
        value = await client.zrange(key, 0, -1, withscores=True)
    elif kind == "stream":
        value = [await client.xrange(key), await client.xinfo_groups(key)]
    elif kind == "list":
        value = await client.lrange(key, 0, -1)
    elif kind == "set":
        value = sorted(await client.smembers(key))
    else:
        value = await client.get(key)
    return (kind, repr(value))


async def snapshot(store: ScriptStore) -> Snapshot:
    """Every key of the org: (DUMP, to restore it; its value; its expiry)."""
    out: Snapshot = {}
    for key in await org_keys(store):
        dumped: Any = await store.client.dump(key)
        expires: Any = await store.client.execute_command("PEXPIRETIME", key)
        out[key] = (bytes(dumped), await content(store, key), int(expires))
    return out


def changed_keys(before: Snapshot, after: Snapshot) -> list[str]:
    """Keys whose value or expiry differ."""
    return sorted(k for k in {*before, *after} if before.get(k, ())[1:] != after.get(k, ())[1:])


async def restore(store: ScriptStore, state: Snapshot) -> None:
    for key in await org_keys(store):
        await store.client.delete(key)
    for key, (dumped, _, expires) in state.items():
        await store.client.restore(key, 0, dumped, replace=True)
        if expires > 0:
            await store.client.execute_command("PEXPIREAT", key, expires)


async def corruptions(store: ScriptStore, key: str) -> list[Callable[[], Awaitable[Any]]]:
    """Ways to break ``key``: another type; each integer field of a hash not an integer, or
    past what HINCRBY can add to."""
    client = store.client
    kind = str(await client.type(key))

    async def retype() -> None:
        await client.delete(key)
        if kind == "string":
            await client.hset(key, "x", "1")
        else:
            await client.set(key, "x")

    out: list[Callable[[], Awaitable[Any]]] = [retype]
    if kind == "hash":
        fields: dict[str, str] = await client.hgetall(key)
        for field, value in fields.items():
            if value.lstrip("-").isdigit():
                for bad in (NEAR_2_63, "lots"):
                    out.append(lambda f=field, b=bad: client.hset(key, f, b))
    return out


def operations(engine: Engine, store: ScriptStore) -> dict[str, Callable[[], Awaitable[Any]]]:
    queue = EventQueue(store)
    return {
        "reserve": lambda: engine.reserve(reserve("fresh")),
        "reserve-replay": lambda: engine.reserve(reserve("held")),
        "commit": lambda: engine.commit(ORG, "held", CommitRequest(usage=USAGE)),
        "commit-replay": lambda: engine.commit(
            ORG, "done", CommitRequest(usage=USAGE, model="claude-haiku-test")
        ),
        "release": lambda: engine.release(ORG, "held"),
        "expire": lambda: engine.expire(ORG),
        "record": lambda: engine.record(
            UsageRequest(org=ORG, user="bob", model="claude-haiku-test", usage=USAGE)
        ),
        "adjust": lambda: adjustments.adjust(
            engine,
            AdjustmentRequest(
                org=ORG, budget="user-hour", entity="bob", amount_micros=-1, reason="test"
            ),
            "test",
        ),
        "status": lambda: engine.budgets(ORG, "bob", None, "claude-haiku-test"),
        "emit": lambda: queue.emit(ORG, "test-event", timedelta(days=1), {"type": "test"}),
        "trim": lambda: ledger.trim(store, ORG, 2**42),
    }


async def build_state(engine: Engine, clock: FrozenClock) -> None:
    """Holds (one open, one lapsed), a commit, a record: counters, buckets, a hold index,
    reservations, event markers, the ledger and the event stream all exist."""
    for rid in ("held", "done", "lapsed"):
        assert isinstance(await engine.reserve(reserve(rid)), Grant)
    await engine.commit(ORG, "done", CommitRequest(usage=USAGE, model="claude-haiku-test"))
    await engine.record(UsageRequest(org=ORG, user="bob", model="claude-haiku-test", usage=USAGE))
    clock.advance(timedelta(seconds=1))


@pytest.mark.parametrize(
    "operation",
    [
        "reserve",
        "reserve-replay",
        "commit",
        "commit-replay",
        "release",
        "expire",
        "record",
        "adjust",
        "status",
        "emit",
        "trim",
    ],
)
async def test_a_script_on_corrupt_state_applies_fully_or_changes_nothing(
    make_engine: Callable[..., Engine], store: ScriptStore, clock: FrozenClock, operation: str
) -> None:
    engine = make_engine(POLICY)
    await build_state(engine, clock)
    # The lapsed hold's lease ends now (Redis time), so reserve and expire reclaim it.
    await store.client.zadd(keys.holds(ORG), {"lapsed": 1})
    base = await snapshot(store)
    run = operations(engine, store)[operation]
    # Keys an operation creates: wrong-typed in advance, too.
    candidates = sorted({*base, keys.ledger_archive(ORG)})
    script_errors: list[BaseException] = []
    run_script = store.run_script

    async def watched(*args: Any, **kwargs: Any) -> Any:
        try:
            return await run_script(*args, **kwargs)
        except Exception as exc:
            script_errors.append(exc)
            raise

    tried = failed = 0
    for key in candidates:
        for corrupt in await corruptions(store, key) if key in base else [_string(store, key)]:
            await restore(store, base)
            await corrupt()
            before = await snapshot(store)
            script_errors.clear()
            store.run_script = watched  # type: ignore[method-assign]
            try:
                await run()
            except Exception:  # what a failed script left is checked below
                pass
            finally:
                store.run_script = run_script  # type: ignore[method-assign]
            if script_errors:
                # A script failed: it must have failed before its first write. (A script that
                # succeeded applied fully; what the engine makes of a corrupt answer afterwards
                # is not the scripts' rule.)
                failed += 1
                after = await snapshot(store)
                changed = changed_keys(before, after)
                assert not changed, (
                    f"{operation} failed ({script_errors[0]!r}) after writing {changed}; "
                    f"corrupted: {key}"
                )
            tried += 1
    assert tried > 20  # the state was rich enough to corrupt in many ways
    assert failed > 0  # and some corruption reached the operation


def _string(store: ScriptStore, key: str) -> Callable[[], Awaitable[Any]]:
    return lambda: store.client.set(key, "x")
