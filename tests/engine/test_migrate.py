"""The upgrade to issue 13's layout: ``budgetd store migrate`` folds an org's counters, buckets
and open holds from the old keys into today's, once; the old ledger entries still reconcile,
and a hold made before the upgrade commits after it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import msgspec

from budgetd import ledger
from budgetd.clock import FrozenClock
from budgetd.contract import CommitRequest, Grant, ReserveRequest
from budgetd.engine import Engine
from budgetd.expiry import counter_expiry
from budgetd.periods import window
from budgetd.store import keys
from budgetd.store.migrate import migrate
from budgetd.store.scripted import ScriptStore
from budgetd.usage import Usage

POLICY = """
org: acme
timezone: UTC
defaults: {hold_ttl_s: 600}
budgets:
  - {name: org-month, scope: org, limit_usd: 100, period: month}
  - {name: user-day, scope: user, limit_usd: 10, period: day}
  - {name: roll, scope: org, limit_usd: 50, period: 1h}
rate_limits:
  - name: rate
    scope: user
    requests_per_minute: 1000
    input_tokens_per_minute: 1000000
    output_tokens_per_minute: 1000000
"""
HELD = 100


def _ms(engine: Engine, days: int = 0) -> int:
    return int((engine.clock.now() + timedelta(days=days)).timestamp() * 1000)


async def _old_layout(engine: Engine, store: ScriptStore) -> dict[str, str]:
    """What the scripts before issue 13 left: per-budget counter hashes, a rolling held key,
    one bucket hash per kind, an open hold with a JSON plan, and ledger entries naming the old
    keys. Returns the old counter keys by budget."""
    policy = engine.policy("acme")
    rules = {r.name: r for r in policy.budgets}
    now = engine.clock.now()
    wins = {name: window(rule.period, policy.tz, now) for name, rule in rules.items()}
    old = {
        "org-month": keys.legacy_period_counter("acme", "org-month", "acme", "2026-11"),
        "user-day": keys.legacy_period_counter(
            "acme", "user-day", "bob", wins["user-day"].charge_id
        ),
        "roll": keys.legacy_period_counter("acme", "roll", "acme", wins["roll"].charge_id),
        "roll-held": keys.legacy_rolling_held("acme", "roll", "acme"),
    }
    c = store.client
    expire = _ms(engine, days=30)
    await c.hset(old["org-month"], mapping={"spent": 500, "held": HELD})
    await c.hset(old["user-day"], mapping={"spent": 200, "held": HELD})
    await c.hset(old["roll"], mapping={"spent": 300})
    await c.hset(old["roll-held"], mapping={"held": HELD})
    for key in old.values():
        await c.pexpireat(key, expire)
    bucket = keys.legacy_bucket("acme", "rate", "bob", "requests")
    await c.hset(bucket, mapping={"t": 999 * 60000, "ms": _ms(engine), "x": expire})
    await c.pexpireat(bucket, expire)

    def entry(name: str, key: str, held_key: str) -> dict[str, object]:
        win = wins[name]
        out: dict[str, object] = {
            "h": held_key,
            "c": key,
            "x": int(win.expire_at.timestamp() * 1000),
            "l": 10**9,
            "m": "block",
            "th": [50],
            "n": name,
            "s": "org" if name != "user-day" else "user",
            "en": "bob" if name == "user-day" else "acme",
            "p": win.charge_id,
            "pe": int(win.end.timestamp() * 1000),
        }
        if name == "roll":
            out["w"] = rules[name].period.bucket_s * 1000
            out["xo"] = int((win.expire_at - win.end).total_seconds() * 1000)
        return out

    plan = {
        "a": HELD,
        "b": [
            entry("org-month", old["org-month"], old["org-month"]),
            entry("user-day", old["user-day"], old["user-day"]),
            entry("roll", old["roll"], old["roll-held"]),
        ],
        "t": [
            {
                "k": keys.legacy_bucket("acme", "rate", "bob", k),
                "r": 1000,
                "c": 1000,
                "n": n,
                "q": q,
            }
            for k, q, n in (("requests", "requests", 1), ("input_tokens", "input", 10))
        ],
    }
    meta = msgspec.json.encode({"model": "claude-haiku-test", "user": "bob"}).decode()
    deadline = int((await store.server_time() + 600) * 1000)  # leases run on Redis time
    await c.hset(
        keys.reservation("acme", "old"),
        mapping={
            "st": "held",
            "fp": "x",
            "res": "",
            "dl": deadline,
            "plan": msgspec.json.encode(plan).decode(),
            "meta": meta,
            "ct": _ms(engine),
        },
    )
    await c.zadd(keys.holds("acme"), {"old": deadline})
    for cost, charged in ((200, ("org-month", "user-day")), (300, ("org-month", "roll"))):
        await c.xadd(
            keys.ledger("acme"),
            {"kind": "record", "cost_micros": cost, "charged": " ".join(old[n] for n in charged)},
        )
    return old


async def _scopes(engine: Engine) -> dict[str, tuple[int, int]]:
    result = await engine.budgets("acme", "bob", None, None)
    return {
        s.name: (s.spent_micros or 0, s.held_micros or 0)
        for s in result.scopes
        if s.kind == "budget"
    }


async def test_migrate_folds_the_old_layout_once_and_its_holds_still_settle(
    make_engine: Callable[..., Engine], store: ScriptStore, clock: FrozenClock
) -> None:
    engine = make_engine(POLICY)
    old = await _old_layout(engine, store)
    expiry = counter_expiry(engine.policy("acme"))
    assert await _scopes(engine) == {n: (0, 0) for n in ("org-month", "user-day", "roll")}

    done = await migrate(store, "acme", expiry)
    assert (done.counters, done.buckets, done.plans, done.skipped) == (4, 1, 1, [])
    for key in old.values():
        assert not await store.client.exists(key)
    assert await _scopes(engine) == {
        "org-month": (500, HELD),
        "user-day": (200, HELD),
        "roll": (300, HELD),
    }
    # The old ledger entries name the old keys: reconcile reads them as today's counters.
    report = await ledger.reconcile(store, "acme", expiry)
    assert report.ok and report.open_holds == 1, report.differences
    # The expiry of the folded counters carried over.
    month = keys.counters("acme", "2026-11")
    assert await store.client.pexpiretime(month) >= _ms(engine, days=30) - 1000

    again = await migrate(store, "acme", expiry)
    assert (again.counters, again.buckets, again.plans) == (0, 0, 0)

    # The hold made before the upgrade settles into the folded counters.
    done_commit = await engine.commit(
        "acme", "old", CommitRequest(usage=Usage(input_tokens=10), model="claude-haiku-test")
    )
    assert done_commit.cost_micros > 0
    cost = done_commit.cost_micros
    assert await _scopes(engine) == {
        "org-month": (500 + cost, 0),
        "user-day": (200 + cost, 0),
        "roll": (300 + cost, 0),
    }
    # New traffic on the migrated state, and reconcile stays exact.
    grant = await engine.reserve(
        ReserveRequest(
            org="acme", user="bob", model="claude-haiku-test", input_tokens=10, max_tokens=10
        )
    )
    assert isinstance(grant, Grant)
    report = await ledger.reconcile(store, "acme", expiry)
    assert report.ok and report.entries == 3, report.differences


async def test_a_hold_from_before_the_upgrade_waits_for_migrate_untouched(
    make_engine: Callable[..., Engine], store: ScriptStore, clock: FrozenClock
) -> None:
    """Lazy expiry leaves an old-format hold alone (migrate rewrites it); reserves go on."""
    engine = make_engine(POLICY)
    await _old_layout(engine, store)
    await store.client.zadd(keys.holds("acme"), {"old": 1})  # its lease ran out
    grant = await engine.reserve(
        ReserveRequest(
            org="acme", user="bob", model="claude-haiku-test", input_tokens=10, max_tokens=10
        )
    )
    assert isinstance(grant, Grant)
    assert await store.client.hget(keys.reservation("acme", "old"), "st") == "held"
    assert await store.client.zscore(keys.holds("acme"), "old") == 1
    done = await migrate(store, "acme", counter_expiry(engine.policy("acme")))
    assert done.plans == 1
    assert await engine.expire("acme") == (1, 0)
    assert await _scopes(engine) == {
        "org-month": (500, grant.held_micros),
        "user-day": (200, grant.held_micros),
        "roll": (300, grant.held_micros),
    }
