"""The pipelined script connection: replies stay paired with their calls when callers give
up, many calls share the connection, NOSCRIPT reloads, a call past its deadline is ``Overdue``
(one timer per connection, no timeout per call), and a lost server is an outage that the next
call recovers from."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest

from budgetd.store.base import StoreUnavailable
from budgetd.store.pipeline import Overdue, ScriptPipeline

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


@pytest.fixture
async def pipeline(redis_url: str) -> AsyncIterator[ScriptPipeline]:
    host_port, _, db = redis_url.removeprefix("redis://").partition("/")
    host, _, port = host_port.partition(":")
    made = ScriptPipeline(host, int(port), db=int(db or 0))
    yield made
    await made.close()


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
