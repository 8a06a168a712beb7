"""The hot path to Redis: one connection per server, every script call pipelined on it (used for
a single server, and per primary on a cluster by ``node_pipelines.py``).

redis-py takes a pooled connection per call, packs the command in Python and waits for the reply
before the connection is reused: most of a reserve's Redis cost was that bookkeeping, not Redis.
Here each call is packed by hiredis (C) and written at once, without waiting for the replies of
the calls before it; replies come back on one read stream, in order (Redis answers a
connection's commands in order), so a FIFO of futures pairs each reply with its call. A call
costs one round trip at most, and several in flight share the reads.

Writing at once, rather than gathering a loop turn's calls into one write, lets Redis run the
first script while the service still prepares the next: with 8 requests in flight, gathering
every call made them travel as a convoy (the service idle while Redis ran all eight, then Redis
idle), and ``bench/reserve_commit.py`` did 1,300 pairs/s against 1,690 writing at once, at the
same CPU per request. Write coalescing (``coalesce=True``, ``BUDGETD_REDIS_COALESCE``) keeps
that first write: a call on a connection with nothing in flight is written at once; a call
while others are in flight (Redis is busy with them) waits in a buffer written once at the end
of the loop turn (``loop.call_soon``), or at once when the buffer passes ``COALESCE_MAX_BYTES``.
It is off by default: measured, it cut Redis's reads per call but not its CPU per pair, and
cost 13 % of the throughput (docs/performance.md, "Write coalescing (issue 13)").

Every call carries a deadline (the store timeout, on the loop's clock). The FIFO keeps each
call's deadline next to its future, and one timer per connection (``loop.call_at``) fails the
overdue calls with ``Overdue``: no ``asyncio.timeout`` per call, whose timer handle, context
manager and task cancellation cost more client CPU than the rest of the call's bookkeeping
(``bench/pipeline_deadline.py``). The timer is armed for the earliest deadline not yet
watched and is not cancelled when replies come in: while calls flow it fires about once per
timeout, finds nothing overdue and re-arms for the oldest call in flight.

A call whose caller gave up (overdue, cancellation) keeps its place in the FIFO, so the replies
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
import math
from typing import Any, cast

import hiredis
import redis.exceptions

from budgetd.store.base import StoreUnavailable

CONNECTION_NAME = "budgetd-pipeline"
COALESCE_MAX_BYTES = 64 * 1024
"""A coalescing buffer this large is written at once rather than at the end of the turn."""
EARLY_S = 0.001
"""A deadline this close counts as passed when the timer fires: uvloop rounds a timer's delay
to whole milliseconds, so it may fire a little before the deadline it was armed for."""


def _pack(*parts: Any) -> bytes:
    """One command in RESP, packed in C."""
    packed: bytes = hiredis.pack_command(parts)
    return packed


class _Protocol(asyncio.Protocol):
    def __init__(self, coalesce: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self.coalesce = coalesce
        self._buffer: list[bytes] = []
        """Packed calls not yet written (coalescing): the last ``len`` entries of ``waiting``."""
        self._buffered_bytes = 0
        self.reader = hiredis.Reader(encoding="utf-8")
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        """Calls in flight, in the order Redis answers them, each with its deadline."""
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future = self.waiting.popleft()[0]
            if not future.done():  # a caller that gave up is skipped, its reply dropped
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        reason = exc or "closed by server"
        # The calls still in the buffer (the FIFO's tail) never left: they did not run.
        unsent = NotSent(f"redis connection lost before the call was written: {reason}")
        for _ in range(len(self._buffer)):
            future = self.waiting.pop()[0]
            if not future.done():
                future.set_exception(unsent)
        self._buffer.clear()
        error = StoreUnavailable(
            f"redis connection lost with calls in flight (they may have run): {reason}"
        )
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)

    def send(self, packed: bytes, deadline: float) -> asyncio.Future[Any]:
        """Write one packed command; its reply, or ``Overdue`` once ``deadline`` (loop time)
        passed without one."""
        future: asyncio.Future[Any] = self.loop.create_future()
        if self.closed or self.transport is None or self.transport.is_closing():
            future.set_exception(NotSent("redis connection closed before the call was sent"))
            return future
        if not self.coalesce or not self.waiting:
            self.transport.write(packed)  # nothing in flight: Redis is idle, no reason to wait
        else:
            if not self._buffer:
                self.loop.call_soon(self._flush)
            self._buffer.append(packed)
            self._buffered_bytes += len(packed)
            if self._buffered_bytes >= COALESCE_MAX_BYTES:
                self._flush()
        self.waiting.append((future, deadline))
        if deadline < self._timer_at:  # the common case (a timer already armed) skips this
            self._arm(deadline)
        return future

    def _flush(self) -> None:
        """Write the buffered calls in one write (a no-op if already written, or lost)."""
        transport = self.transport
        if not self._buffer or transport is None or transport.is_closing():
            return  # a closing connection fails the buffered calls as never sent

        buffered, self._buffer, self._buffered_bytes = self._buffer, [], 0
        transport.write(b"".join(buffered))

    def _arm(self, at: float) -> None:
        self._disarm()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._fail_overdue)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf

    def _fail_overdue(self) -> None:
        """The timer: fail every call past its deadline (each keeps its place in the FIFO),
        and watch the earliest deadline still ahead. Deadlines are mostly in FIFO order, but not
        always (a store's timeout may change, NOSCRIPT sends again under the first deadline),
        so every call in flight is looked at: once per timeout, not once per call."""
        self._timer, self._timer_at = None, math.inf
        now = self.loop.time() + EARLY_S
        ahead = math.inf
        for future, deadline in self.waiting:
            if future.done():
                continue
            if deadline <= now:
                future.set_exception(
                    Overdue("redis did not answer within the store timeout (the call may have run)")
                )
            elif deadline < ahead:
                ahead = deadline
        if ahead < math.inf:
            self._arm(ahead)


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
        coalesce: bool = False,
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self.coalesce = coalesce
        self.username, self.password = username, password
        self.connect_timeout_s = connect_timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connection(self, deadline: float) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        try:
            # Waiting for another caller's connection is bounded by the call's deadline; the
            # connection itself also by the connect timeout (in _connect).
            async with asyncio.timeout_at(deadline):
                return await self._connect()
        except NotSent:
            raise
        except (OSError, TimeoutError, StoreUnavailable) as exc:
            # No script was written on this connection yet: whatever failed, none ran.
            raise NotSent(f"redis unreachable: {type(exc).__name__}: {exc}") from exc

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            # Race: another caller may have reconnected while this one waited for the lock.
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(self.connect_timeout_s):
                _, made = await loop.create_connection(
                    lambda: _Protocol(self.coalesce), self.host, self.port
                )
                # The setup replies are bounded by the timeouts around them, not by a deadline.
                never = math.inf
                setup = []
                if self.password is not None:
                    auth = (
                        ("AUTH", self.username, self.password)
                        if self.username
                        else ("AUTH", self.password)
                    )
                    setup.append(made.send(_pack(*auth), never))
                if self.db:
                    setup.append(made.send(_pack("SELECT", self.db), never))
                # Named, so operators (and tests) can tell it apart in CLIENT LIST. An ACL
                # user without CLIENT SETNAME still connects: that reply is not checked.
                named = made.send(_pack("CLIENT", "SETNAME", CONNECTION_NAME), never)
                try:
                    for reply in await asyncio.gather(*setup):
                        if isinstance(reply, hiredis.ReplyError):
                            raise NotSent(f"redis refused the connection: {reply}")
                    await named
                except BaseException:
                    if made.transport is not None:  # a failed setup leaves no connection open
                        made.transport.close()
                    raise
            self._protocol = made
            return made

    async def call(
        self, sha: str, source: str, keys: list[str], args: list[str | int], *, deadline: float
    ) -> Any:
        """Run a script; ``Overdue`` when no reply came by ``deadline`` (the loop's clock)."""
        protocol = self._protocol
        if protocol is None or protocol.closed:  # no coroutine for the common case
            protocol = await self._connection(deadline)
        reply = await protocol.send(_pack("EVALSHA", sha, len(keys), *keys, *args), deadline)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            # The server lost its script cache (restart, failover, SCRIPT FLUSH): EVAL sends the
            # text once and caches it again, under the same deadline.
            reply = await protocol.send(_pack("EVAL", source, len(keys), *keys, *args), deadline)
        if isinstance(reply, hiredis.ReplyError):
            raise ScriptError(str(reply))
        return reply

    async def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()


class NotSent(StoreUnavailable):
    """The call never reached Redis (no connection): it did not run, so it may be sent again."""


class Overdue(StoreUnavailable):
    """No reply by the call's deadline: Redis is stalled or slow, and the call may have run.

    Not a lost connection: the call keeps its place, its reply is dropped when it comes, and
    the connection serves the next calls."""


class ScriptError(redis.exceptions.ResponseError):
    """Redis answered a script call with an error: the script ran (and, by the scripts' rule,
    wrote nothing), or the server refused to run it (``refused``)."""

    REFUSALS = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "LOADING", "BUSY ")
    """Error replies a server gives *instead of* running the call."""

    @property
    def refused(self) -> bool:
        return str(self).startswith(self.REFUSALS)
