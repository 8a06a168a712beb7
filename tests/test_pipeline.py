"""The pipelined script connection: replies stay paired with their calls when callers give
up, many calls share the connection, NOSCRIPT reloads, a call past its deadline is ``Overdue``
(one timer per connection, no timeout per call), and a lost server is an outage that the next
call recovers from; each with and without write coalescing, whose writes are counted here."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from budgetd.settings import ConfigError, from_env
from budgetd.store.base import StoreUnavailable
from budgetd.store.connect import redis_store
from budgetd.store.pipeline import COALESCE_MAX_BYTES, NotSent, Overdue, ScriptPipeline

ECHO = "return ARGV[1]"
# Busy-waits about half a second on the server (long enough to give up on it).
SLOW = """
local t = redis.call('TIME')
local until_us = tonumber(t[1]) * 1000000 + tonumber(t[2]) + 500000
repeat t = redis.call('TIME') until tonumber(t[1]) * 1000000 + tonumber(t[2]) >= until_us
return 'slow'
"""


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _in(seconds: float) -> float:
    """A deadline ``seconds`` from now, on the loop's clock."""
    return asyncio.get_running_loop().time() + seconds


@pytest.fixture(params=[False, True], ids=["write-at-once", "coalesce"])
async def pipeline(redis_url: str, request: pytest.FixtureRequest) -> AsyncIterator[ScriptPipeline]:
    host_port, _, db = redis_url.removeprefix("redis://").partition("/")
    host, _, port = host_port.partition(":")
    made = ScriptPipeline(host, int(port), db=int(db or 0), coalesce=request.param)
    yield made
    await made.close()


class _CountingTransport:
    """The connection's transport, recording each write: its size and whether it was made in
    the caller's own task (written at once) or by the loop at the end of a turn (coalesced)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes: list[tuple[int, bool]] = []

    def write(self, data: bytes) -> None:
        self.writes.append((len(data), asyncio.current_task() is not None))
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def _counted(pipeline: ScriptPipeline) -> _CountingTransport:
    """Connect (the setup's writes are not counted), then count the connection's writes."""
    assert await pipeline.call(_sha(ECHO), ECHO, [], ["warm"], deadline=_in(5)) == "warm"
    protocol = await pipeline._connection(_in(5))
    counting = _CountingTransport(protocol.transport)
    protocol.transport = counting  # type: ignore[assignment]
    return counting


async def test_a_lone_call_is_written_at_once_in_its_callers_task(
    pipeline: ScriptPipeline,
) -> None:
    counting = await _counted(pipeline)
    assert await pipeline.call(_sha(ECHO), ECHO, [], ["lone"], deadline=_in(5)) == "lone"
    assert [in_task for _, in_task in counting.writes] == [True]


async def test_calls_made_in_one_loop_turn_share_one_write_when_coalescing(
    pipeline: ScriptPipeline,
) -> None:
    counting = await _counted(pipeline)
    replies = await asyncio.gather(  # 20 tasks, all started in the same loop turn
        *(pipeline.call(_sha(ECHO), ECHO, [], [str(i)], deadline=_in(5)) for i in range(20))
    )
    assert replies == [str(i) for i in range(20)]
    in_task = [in_task for _, in_task in counting.writes]
    if pipeline.coalesce:
        # The first call finds Redis idle and is written at once; the 19 made while it is in
        # flight go together in one write at the end of the turn.
        assert in_task == [True, False]
    else:
        assert in_task == [True] * 20


async def test_a_full_coalescing_buffer_is_written_without_waiting_for_the_turn(
    pipeline: ScriptPipeline,
) -> None:
    counting = await _counted(pipeline)
    big = "x" * (COALESCE_MAX_BYTES // 4)
    replies = await asyncio.gather(
        *(pipeline.call(_sha(ECHO), ECHO, [], [big], deadline=_in(5)) for _ in range(10))
    )
    assert replies == [big] * 10
    if pipeline.coalesce:  # 1 at once; 4 (a full buffer) in a task, twice; 1 at the turn's end
        assert [in_task for _, in_task in counting.writes] == [True, True, True, False]
        assert max(size for size, _ in counting.writes) < 2 * COALESCE_MAX_BYTES


async def test_calls_buffered_on_a_connection_that_closes_were_not_sent(
    redis_url: str,
) -> None:
    host_port, _, _ = redis_url.removeprefix("redis://").partition("/")
    host, _, port = host_port.partition(":")
    pipeline = ScriptPipeline(host, int(port), coalesce=True)
    await _counted(pipeline)
    calls = [
        asyncio.create_task(pipeline.call(_sha(ECHO), ECHO, [], [str(i)], deadline=_in(5)))
        for i in range(3)
    ]
    await asyncio.sleep(0)  # the three calls ran their first step: one written, two buffered
    await pipeline.close()  # before the turn's end: the buffer never leaves
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert [type(o) for o in outcomes[1:]] == [NotSent, NotSent]


async def test_concurrent_calls_each_get_their_own_reply(pipeline: ScriptPipeline) -> None:
    replies = await asyncio.gather(
        *(pipeline.call(_sha(ECHO), ECHO, [], [str(i)], deadline=_in(5)) for i in range(500))
    )
    assert replies == [str(i) for i in range(500)]


async def test_a_caller_that_gives_up_does_not_shift_the_replies(pipeline: ScriptPipeline) -> None:
    slow = asyncio.create_task(pipeline.call(_sha(SLOW), SLOW, [], [], deadline=_in(5)))
    await asyncio.sleep(0.05)
    follower = asyncio.create_task(pipeline.call(_sha(ECHO), ECHO, [], ["mine"], deadline=_in(5)))
    await asyncio.sleep(0.05)
    slow.cancel()  # its reply still arrives, and must be dropped, not given to the follower
    assert await follower == "mine"


async def test_lost_server_is_unavailable_then_recovers(pipeline: ScriptPipeline) -> None:
    assert await pipeline.call(_sha(ECHO), ECHO, [], ["a"], deadline=_in(5)) == "a"
    protocol = await pipeline._connection(_in(5))
    assert protocol.transport is not None
    protocol.transport.abort()  # the connection drops under the caller
    await asyncio.sleep(0.01)
    assert await pipeline.call(_sha(ECHO), ECHO, [], ["b"], deadline=_in(5)) == "b"  # reconnected


async def test_unreachable_server_is_store_unavailable() -> None:
    dead = ScriptPipeline("127.0.0.1", 1, connect_timeout_s=0.5)
    with pytest.raises(StoreUnavailable):
        await dead.call(_sha(ECHO), ECHO, [], ["x"], deadline=_in(5))


async def test_a_call_past_its_deadline_is_overdue_and_the_connection_keeps_serving(
    pipeline: ScriptPipeline,
) -> None:
    follower_deadline = _in(5)
    slow = asyncio.create_task(pipeline.call(_sha(SLOW), SLOW, [], [], deadline=_in(0.05)))
    await asyncio.sleep(0)
    # Sent behind the slow call, with a later deadline: it waits for the slow script, then
    # gets its own reply (the slow one's reply is dropped, not handed on).
    follower = asyncio.create_task(
        pipeline.call(_sha(ECHO), ECHO, [], ["mine"], deadline=follower_deadline)
    )
    with pytest.raises(Overdue):
        await slow
    assert not follower.done()  # its own deadline is still ahead
    assert await follower == "mine"
    assert await pipeline.call(_sha(ECHO), ECHO, [], ["next"], deadline=_in(5)) == "next"


async def test_an_earlier_deadline_sent_later_is_still_watched(pipeline: ScriptPipeline) -> None:
    # The timer is armed for the first call's (late) deadline; a call with an earlier one,
    # sent after it (a store whose timeout was lowered), must not wait for that timer.
    first = asyncio.create_task(pipeline.call(_sha(SLOW), SLOW, [], [], deadline=_in(30)))
    await asyncio.sleep(0)
    hurried = asyncio.create_task(pipeline.call(_sha(ECHO), ECHO, [], ["x"], deadline=_in(0.05)))
    with pytest.raises(Overdue):
        await hurried
    assert not first.done()  # overdue is per call: the slow one still has time
    assert await first == "slow"


async def test_overdue_calls_are_all_failed_by_one_timer(pipeline: ScriptPipeline) -> None:
    slow = asyncio.create_task(pipeline.call(_sha(SLOW), SLOW, [], [], deadline=_in(0.05)))
    await asyncio.sleep(0)
    behind = [
        asyncio.create_task(pipeline.call(_sha(ECHO), ECHO, [], [str(i)], deadline=_in(0.05)))
        for i in range(20)
    ]
    results = await asyncio.gather(slow, *behind, return_exceptions=True)
    assert all(isinstance(r, Overdue) for r in results)
    assert await pipeline.call(_sha(ECHO), ECHO, [], ["after"], deadline=_in(5)) == "after"


def test_the_setting_reaches_the_services_pipeline(redis_url: str) -> None:
    assert from_env({}).redis_coalesce is False
    assert from_env({"BUDGETD_REDIS_COALESCE": "true"}).redis_coalesce is True
    with pytest.raises(ConfigError, match=r"^BUDGETD_REDIS_COALESCE='sometimes'"):
        from_env({"BUDGETD_REDIS_COALESCE": "sometimes"})
    for coalesce in (False, True):
        store = redis_store(redis_url, coalesce=coalesce)
        assert store.pipeline is not None and store.pipeline.coalesce is coalesce
