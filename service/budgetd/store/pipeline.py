"""The hot path to Redis: one connection per server, every script call pipelined on it (used for
a single server, and per primary on a cluster by ``node_pipelines.py``).

redis-py takes a pooled connection per call, packs the command in Python and waits for the reply
before the connection is reused: most of a reserve's Redis cost was that bookkeeping, not Redis.
Here each call is packed by hiredis (C) and written at once, without waiting for the replies of
the calls before it; replies come back on one read stream, in order (Redis answers a
connection's commands in order), so a FIFO of futures pairs each reply with its call. A call
costs one round trip at most, and several in flight share the reads.

Writing at once, rather than gathering a loop turn's calls into one write, lets Redis run the
first script while the service still prepares the next: with 8 requests in flight, gathering made
them travel as a convoy (the service idle while Redis ran all eight, then Redis idle), and
``bench/reserve_commit.py`` did 1,300 pairs/s against 1,690 writing at once, at the same CPU
per request.

A call whose caller gave up (timeout, cancellation) keeps its place in the FIFO, so the replies
after it still go to the right callers. A lost connection fails every call in flight; the next
call reconnects. Plain TCP only: ``connect.py`` leaves TLS and sockets to redis-py.

What a failure proves decides whether the call may be sent again (``node_pipelines.py``): a
call that never left (no connection could be made: ``NotSent``) did not run; a call written to
a connection that was then lost may have run (``StoreUnavailable``); an error reply is a
``ScriptError``, and only a refusal (MOVED, ASK, TRYAGAIN, CLUSTERDOWN...) proves it did not run.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, cast

import hiredis
import redis.exceptions

from budgetd.store.base import StoreUnavailable

CONNECTION_NAME = "budgetd-pipeline"


def _pack(*parts: Any) -> bytes:
    """One command in RESP, packed in C."""
    packed: bytes = hiredis.pack_command(parts)
    return packed


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(encoding="utf-8")
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future = self.waiting.popleft()
            if not future.done():  # a caller that gave up is skipped, its reply dropped
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        error = StoreUnavailable(
            f"redis connection lost with calls in flight (they may have run): "
            f"{exc or 'closed by server'}"
        )
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.closed or self.transport is None or self.transport.is_closing():
            future.set_exception(NotSent("redis connection closed before the call was sent"))
            return future
        self.waiting.append(future)
        self.transport.write(packed)
        return future


class ScriptPipeline:
    """Script calls (EVALSHA, EVAL on NOSCRIPT) over one pipelined connection."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        connect_timeout_s: float = 1.0,
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.connect_timeout_s = connect_timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            # Race: another caller may have reconnected while this one waited for the lock.
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    _, made = await loop.create_connection(_Protocol, self.host, self.port)
                    setup = []
                    if self.password is not None:
                        auth = (
                            ("AUTH", self.username, self.password)
                            if self.username
                            else ("AUTH", self.password)
                        )
                        setup.append(made.send(_pack(*auth)))
                    if self.db:
                        setup.append(made.send(_pack("SELECT", self.db)))
                    # Named, so operators (and tests) can tell it apart in CLIENT LIST. An ACL
                    # user without CLIENT SETNAME still connects: that reply is not checked.
                    named = made.send(_pack("CLIENT", "SETNAME", CONNECTION_NAME))
                    for reply in await asyncio.gather(*setup):
                        if isinstance(reply, hiredis.ReplyError):
                            raise NotSent(f"redis refused the connection: {reply}")
                    await named
            except (OSError, TimeoutError, StoreUnavailable) as exc:
                # No script was written on this connection yet: whatever failed, none ran.
                raise NotSent(f"redis unreachable: {type(exc).__name__}: {exc}") from exc
            self._protocol = made
            return made

    async def call(self, sha: str, source: str, keys: list[str], args: list[str | int]) -> Any:
        protocol = await self._connection()
        reply = await protocol.send(_pack("EVALSHA", sha, len(keys), *keys, *args))
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            # The server lost its script cache (restart, failover, SCRIPT FLUSH): EVAL sends the
            # text once and caches it again.
            reply = await protocol.send(_pack("EVAL", source, len(keys), *keys, *args))
        if isinstance(reply, hiredis.ReplyError):
            raise ScriptError(str(reply))
        return reply

    async def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()


class NotSent(StoreUnavailable):
    """The call never reached Redis (no connection): it did not run, so it may be sent again."""


class ScriptError(redis.exceptions.ResponseError):
    """Redis answered a script call with an error: the script ran (and, by the scripts' rule,
    wrote nothing), or the server refused to run it (``refused``)."""

    REFUSALS = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "LOADING", "BUSY ")
    """Error replies a server gives *instead of* running the call."""

    @property
    def refused(self) -> bool:
        return str(self).startswith(self.REFUSALS)
