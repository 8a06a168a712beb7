"""The pipelined script connection: replies stay paired with their calls when callers give
up, many calls share the connection, NOSCRIPT reloads, and a lost server is an outage that the
next call recovers from."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest

from budgetd.store.base import StoreUnavailable
from budgetd.store.pipeline import ScriptPipeline

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


@pytest.fixture
async def pipeline(redis_url: str) -> AsyncIterator[ScriptPipeline]:
    host_port, _, db = redis_url.removeprefix("redis://").partition("/")
    host, _, port = host_port.partition(":")
    made = ScriptPipeline(host, int(port), db=int(db or 0))
    yield made
    await made.close()


async def test_concurrent_calls_each_get_their_own_reply(pipeline: ScriptPipeline) -> None:
    replies = await asyncio.gather(
        *(pipeline.call(_sha(ECHO), ECHO, [], [str(i)]) for i in range(500))
    )
    assert replies == [str(i) for i in range(500)]


async def test_a_caller_that_gives_up_does_not_shift_the_replies(pipeline: ScriptPipeline) -> None:
    slow = asyncio.create_task(pipeline.call(_sha(SLOW), SLOW, [], []))
    await asyncio.sleep(0.05)
    follower = asyncio.create_task(pipeline.call(_sha(ECHO), ECHO, [], ["mine"]))
    await asyncio.sleep(0.05)
    slow.cancel()  # its reply still arrives, and must be dropped, not given to the follower
    assert await follower == "mine"


async def test_lost_server_is_unavailable_then_recovers(pipeline: ScriptPipeline) -> None:
    assert await pipeline.call(_sha(ECHO), ECHO, [], ["a"]) == "a"
    protocol = await pipeline._connection()
    assert protocol.transport is not None
    protocol.transport.abort()  # the connection drops under the caller
    await asyncio.sleep(0.01)
    assert await pipeline.call(_sha(ECHO), ECHO, [], ["b"]) == "b"  # reconnected


async def test_unreachable_server_is_store_unavailable() -> None:
    dead = ScriptPipeline("127.0.0.1", 1, connect_timeout_s=0.5)
    with pytest.raises(StoreUnavailable):
        await dead.call(_sha(ECHO), ECHO, [], ["x"])
