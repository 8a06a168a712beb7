"""Every key one reserve or commit touches hashes to one Redis Cluster slot."""

from __future__ import annotations

from redis.crc import key_slot

from budgetd.contract import ReserveRequest
from budgetd.engine import Engine
from budgetd.store import keys
from budgetd.store.base import ReserveCall
from budgetd.store.scripted import ScriptStore

ROLLING = """
org: acme
timezone: America/New_York
teams:
  platform: {users: ["u:{weird}"]}
  ml: {match: "u:*"}
budgets:
  - {name: org-month, scope: org, limit_usd: 100, period: month}
  - {name: feat-7d, scope: feature, limit_usd: 10, period: 7d}
  - {name: user-day, scope: user, limit_usd: 1, period: day}
  - {name: team-month, scope: team, limit_usd: 100, period: month}
  - {name: key-day, scope: key, limit_usd: 100, period: day}
  - {name: tag-day, scope: tag, match: "p:*", limit_usd: 100, period: day}
  - {name: run, scope: session, limit_usd: 5, period: session, idle: 30m}
rate_limits:
  - {name: rate, scope: user, requests_per_minute: 10, input_tokens_per_minute: 10000,
     output_tokens_per_minute: 10000}
  - {name: run-velocity, scope: session, cost_usd_per_minute: 1}
"""


async def test_all_keys_of_a_reserve_share_the_org_slot(
    make_engine,
    store: ScriptStore,  # type: ignore[no-untyped-def]
) -> None:
    engine: Engine = make_engine(ROLLING)
    seen: list[ReserveCall] = []
    original = store.reserve

    async def spy(call: ReserveCall):  # type: ignore[no-untyped-def]
        seen.append(call)
        return await original(call)

    store.reserve = spy  # type: ignore[method-assign]
    await engine.reserve(
        ReserveRequest(
            org="acme",
            model="claude-haiku-test",
            input_tokens=10,
            max_tokens=10,
            user="u:{weird}",
            feature="chat",
            reservation_id="r1",
            tags=["p:{x}", "p:y"],
            session="s:{run}",
        ),
        key="app-{other}",
    )
    call = seen[0]
    # Both of the user's teams have their own counter, in the same slot as the rest.
    assert {b.label.entity for b in call.budgets if b.label.scope == "team"} == {"platform", "ml"}
    assert {b.label.entity for b in call.budgets if b.label.scope == "key"} == {"app-{other}"}
    assert {b.label.entity for b in call.budgets if b.label.scope == "tag"} == {"p:{x}", "p:y"}
    assert {b.label.entity for b in call.budgets if b.label.scope == "session"} == {"s:{run}"}
    assert any(t.kind == "cost" for t in call.buckets)
    touched = [
        keys.reservation("acme", "r1"),
        keys.holds("acme"),
        keys.ledger("acme"),
        keys.usage_record("acme", "x"),
    ]
    for b in call.budgets:
        touched += [b.held_key, b.counter_key]
        if b.sub_bucket_ms:  # a rolling budget's sub-bucket hashes: its prefix + chunk number
            first = b.sub_bucket - 24
            width_s = b.sub_bucket_ms // 1000
            touched += [keys.rolling_chunk("acme", width_s, i) for i in (first, b.sub_bucket)]
    touched += [t.key for t in call.buckets]
    assert len(touched) > 15
    assert {key_slot(k.encode()) for k in touched} == {key_slot(keys.tag("acme").encode())}
    # The commit script reads its keys from the stored plan: those share the slot too.
    plan = str(await store.client.hget(keys.reservation("acme", "r1"), "plan")).split("\t")
    planned = [t for t in plan if t.startswith(keys.PREFIX + ":")]
    assert len(planned) >= len(call.budgets)
    assert {key_slot(k.encode()) for k in planned} == {key_slot(keys.tag("acme").encode())}
    # And every key that exists now (the scripts' own, whatever they built) is in it.
    existing = [str(k) async for k in store.client.scan_iter(match=keys.PREFIX + ":*")]
    assert {key_slot(k.encode()) for k in existing} == {key_slot(keys.tag("acme").encode())}
