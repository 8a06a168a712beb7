"""Every counter key a script creates expires: scripts set a key's TTL when they create it (not
on every call), so each write that can create one must set it, including the writes that find
a key gone while a hold on it is still open (docs/decisions.md, "Redis work per call")."""

from __future__ import annotations

from collections.abc import Callable

from budgetd.contract import CommitRequest, Grant, ReserveRequest
from budgetd.engine import Engine
from budgetd.store import keys
from budgetd.store.scripted import ScriptStore
from budgetd.usage import Usage
from tests.engine.conftest import ACME, HAIKU
from tests.engine.conftest import reserve_request as req

ROLLING = """
org: acme
timezone: UTC
budgets:
  - {name: org-24h, scope: org, limit_usd: 100, period: 24h}
  - {name: user-day, scope: user, limit_usd: 10, period: day}
"""


async def counter_keys(store: ScriptStore) -> list[str]:
    prefix = keys.org_prefix("acme")
    found = [str(k) async for k in store.client.scan_iter(match=prefix + "*")]
    return sorted(k for k in found if kind(k) in ("b", "h", "tb"))


def kind(key: str) -> str:
    return key.removeprefix(keys.org_prefix("acme")).split(":")[0]


async def assert_all_expire(store: ScriptStore) -> None:
    found = await counter_keys(store)
    assert found
    for key in found:
        assert await store.client.pttl(key) > 0, key


async def drop_counters(store: ScriptStore) -> None:
    """What the keys' expiry would do while a hold is open: the counters are gone."""
    for key in await counter_keys(store):
        if kind(key) in ("b", "h"):
            await store.client.delete(key)


async def test_steady_calls_leave_every_counter_expiring(
    make_engine: Callable[..., Engine], store: ScriptStore
) -> None:
    for policy in (ACME, ROLLING):
        engine = make_engine(policy)
        tag = "calendar" if policy is ACME else "rolling"
        for i in range(3):
            assert isinstance(await engine.reserve(req(f"{tag}-{i}")), Grant)
            await engine.commit("acme", f"{tag}-{i}", CommitRequest(usage=Usage(input_tokens=50)))
        assert isinstance(await engine.reserve(req(f"{tag}-released")), Grant)
        await engine.release("acme", f"{tag}-released")
        await assert_all_expire(store)


async def test_a_commit_that_finds_its_counters_gone_recreates_them_expiring(
    make_engine: Callable[..., Engine], store: ScriptStore
) -> None:
    for policy in (ACME, ROLLING):
        engine = make_engine(policy)
        rid = f"gone-commit-{policy is ACME}"
        assert isinstance(await engine.reserve(req(rid)), Grant)
        await drop_counters(store)
        await engine.commit("acme", rid, CommitRequest(usage=Usage(input_tokens=50)))
        await assert_all_expire(store)


async def test_a_release_that_finds_its_counters_gone_recreates_them_expiring(
    make_engine: Callable[..., Engine], store: ScriptStore
) -> None:
    for policy in (ACME, ROLLING):
        engine = make_engine(policy)
        rid = f"gone-release-{policy is ACME}"
        assert isinstance(await engine.reserve(req(rid)), Grant)
        await drop_counters(store)
        await engine.release("acme", rid)
        await assert_all_expire(store)
        # The next hold on the re-created counters keeps them expiring too.
        assert isinstance(await engine.reserve(req(rid + "-next")), Grant)
        await assert_all_expire(store)


SMALL_BUCKET = """
org: acme
timezone: UTC
budgets:
  - {name: org-month, scope: org, limit_usd: 100, period: month}
rate_limits:
  - {name: user-out, scope: user, output_tokens_per_minute: 1000}
"""


async def test_a_draining_bucket_is_kept_until_it_has_refilled(
    make_engine: Callable[..., Engine], store: ScriptStore
) -> None:
    """Its expiry is moved only when it falls short: it must never fall short of the refill."""
    engine = make_engine(SMALL_BUCKET)
    bucket = keys.bucket("acme", "user-out", "bob")
    for i in range(1, 16):
        held = ReserveRequest(
            org="acme",
            model=HAIKU,
            input_tokens=10,
            max_tokens=60,
            user="bob",
            reservation_id=f"d{i}",
        )
        assert isinstance(await engine.reserve(held), Grant)
        # 60 of 1,000 tokens a minute taken per call: refilled 3.6 s per call later, plus a minute.
        refill_ms = 60_000 + i * 3_600
        # 5 s of slack for the time between the script and this read on a loaded machine.
        assert await store.client.pttl(bucket) >= refill_ms - 5_000, i
