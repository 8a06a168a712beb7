"""Token buckets on Redis time: admitted tokens over any window W never exceed
burst + rate·W, and refunds never lift a bucket above its capacity."""

from __future__ import annotations

import asyncio
import time

from budgetd.contract import CommitRequest, Denied, Grant, ReserveRequest
from budgetd.engine import Engine
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
