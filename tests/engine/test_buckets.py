"""Token buckets on Redis time: admitted tokens over any window W never exceed
burst + rate·W, and refunds never lift a bucket above its capacity."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from budgetd.contract import CommitRequest, Denied, Grant, ReserveRequest
from budgetd.engine import Engine
from budgetd.store import keys
from budgetd.store.scripted import ScriptStore
from budgetd.usage import Usage

RATES = """
org: acme
timezone: UTC
rate_limits:
  - {name: rpm, scope: org, requests_per_minute: 600}
  - {name: itpm, scope: user, input_tokens_per_minute: 6000}
"""


def call(**kw: object) -> ReserveRequest:
    base: dict[str, object] = {
        "org": "acme",
        "model": "claude-haiku-test",
        "input_tokens": 0,
        "max_tokens": 1,
    }
    base.update(kw)
    return ReserveRequest(**base)  # type: ignore[arg-type]


async def test_admitted_requests_stay_within_burst_plus_rate(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine: Engine = make_engine(RATES)
    start = time.monotonic()
    admitted = 0
    denied_with_wait = 0
    # Until the bucket has run dry and refilled for a while (bounded: 15 s).
    while (denied_with_wait == 0 or time.monotonic() - start < 1.5) and (
        time.monotonic() - start < 15
    ):
        results = await asyncio.gather(*(engine.reserve(call()) for _ in range(50)))
        admitted += sum(isinstance(r, Grant) for r in results)
        for r in results:
            if isinstance(r, Denied):
                assert r.scopes[0].name == "rpm"
                assert r.retry_after_s is not None
                denied_with_wait += 1
    elapsed = time.monotonic() - start
    # burst 600 + 10/s × elapsed (client-side elapsed bounds Redis-side elapsed from above).
    assert admitted <= 600 + 10 * elapsed + 1
    assert admitted >= 600  # the burst itself was admitted
    assert denied_with_wait > 0


async def test_refund_never_exceeds_capacity(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine: Engine = make_engine(RATES)
    grant = await engine.reserve(call(user="bob", input_tokens=5000, reservation_id="r1"))
    assert isinstance(grant, Grant)
    await asyncio.sleep(0.2)  # refill meanwhile
    await engine.commit("acme", "r1", CommitRequest(usage=Usage(input_tokens=0)))
    view = await engine.budgets("acme", "bob", None, "claude-haiku-test")
    itpm = next(s for s in view.scopes if s.name == "itpm")
    assert itpm.remaining <= 6000
    assert itpm.remaining >= 5990


async def test_bucket_denial_leaves_budgets_and_other_buckets_unchanged(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine: Engine = make_engine(
        RATES.replace(
            "rate_limits:",
            """budgets:
  - {name: org-day, scope: org, limit_usd: 10, period: day}
rate_limits:""",
        )
    )
    result = await engine.reserve(call(user="bob", input_tokens=6001))
    assert isinstance(result, Denied)
    assert [s.name for s in result.scopes] == ["itpm"]
    assert result.retry_after_s is None  # more than the bucket can ever hold
    view = await engine.budgets("acme", "bob", None, "claude-haiku-test")
    by_name = {s.name: s for s in view.scopes}
    assert (by_name["org-day"].spent_micros, by_name["org-day"].held_micros) == (0, 0)
    assert by_name["rpm"].remaining == 600


TWO_KINDS = """
org: acme
timezone: UTC
rate_limits:
  - {name: both, scope: user, requests_per_minute: 60, input_tokens_per_minute: 6000}
"""


async def test_a_bucket_hash_keeps_one_time_for_all_its_kinds(
    make_engine: Callable[..., Engine], store: ScriptStore
) -> None:
    """A refund on one kind writes every kind of the hash as of one time: the kind with
    nothing to give back holds its level refilled to that time, exactly."""
    engine = make_engine(TWO_KINDS)
    bucket = keys.bucket("acme", "both", "bob")
    grant = await engine.reserve(call(user="bob", input_tokens=3000, reservation_id="r1"))
    assert isinstance(grant, Grant)
    reserved = await store.client.hgetall(bucket)
    assert set(reserved) == {"requests.t", "input.t", "ms", "x"}
    await asyncio.sleep(0.05)  # some refill of the request taken
    await engine.commit("acme", "r1", CommitRequest(usage=Usage(input_tokens=1000)))
    committed = await store.client.hgetall(bucket)
    assert set(committed) == {"requests.t", "input.t", "ms", "x"}
    elapsed_ms = int(committed["ms"]) - int(reserved["ms"])
    assert elapsed_ms > 0
    # Levels are tokens × 60,000, refilled by `per minute` scaled units a millisecond.
    assert int(committed["requests.t"]) == min(
        60 * 60_000, int(reserved["requests.t"]) + elapsed_ms * 60
    )
    # input: refilled, and the 2,000 tokens the estimate over-charged given back
    assert int(committed["input.t"]) == min(
        6000 * 60_000, int(reserved["input.t"]) + elapsed_ms * 6000 + 2000 * 60_000
    )


async def test_a_bucket_hash_of_the_per_kind_layout_refills_nothing_it_cannot_show(
    make_engine: Callable[..., Engine], store: ScriptStore
) -> None:
    """A hash written before one time per hash (``<kind>.ms`` per kind) reads as levels of now:
    an empty bucket stays empty rather than refilled from a time the hash no longer keeps."""
    engine = make_engine(TWO_KINDS)
    bucket = keys.bucket("acme", "both", "bob")
    now_ms = int(await store.server_time() * 1000)
    await store.client.hset(
        bucket,
        mapping={
            "requests.t": 0,
            "requests.ms": now_ms - 120_000,  # long enough ago to have refilled in full
            "input.t": 6000 * 60_000,
            "input.ms": now_ms - 120_000,
            "x": now_ms + 3_600_000,
        },
    )
    denied = await engine.reserve(call(user="bob", input_tokens=10))
    assert isinstance(denied, Denied)
    assert [s.name for s in denied.scopes] == ["both"]
    assert denied.retry_after_s is not None and denied.retry_after_s <= 2
