"""httpx2 transports that budget every Messages API call the Anthropic SDK sends.

Give one to the SDK's own HTTP client and every path that reaches ``POST /v1/messages`` or the
batches endpoints is budgeted, whatever method the app called (``with_options``, ``beta``,
``with_raw_response``, streams, tool runners, batches)::

    transport = BudgetTransport(BudgetdClient(url), org="acme", user="alice")
    claude = anthropic.Anthropic(http_client=httpx2.Client(transport=transport))

(The Anthropic SDK is built on ``httpx2``, so these are ``httpx2`` transports.)
Both classes only run the steps of :mod:`budgetd_client.flows`; the async one awaits them.

``settle="background"`` (opt-in) takes budgetd's commit off the app's critical path: the app
gets its response as soon as the body is read, and the commit (or release) is sent by a few
background workers, behind it. What changes is only *when* the spend is recorded: the commit
is the same call (retried, idempotent by its reservation id), it is still sent when the app
moves on, and ``close()`` waits for the queue (up to ``FLUSH_TIMEOUT_S``). Until it lands the
hold (the call's worst case) stays on the budget, so limits stay conservative. What a process
crash or kill loses is the queued commits: their holds expire after their lease and the usage
is never recorded (the budget under-counts those calls). The queue is bounded
(``SETTLE_QUEUE``): when budgetd falls behind, the app waits for room rather than drop one.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Generic, Literal, TypeVar, cast

import anyio
import httpx2

from budgetd_client.client import AsyncBudgetdClient, BudgetdClient
from budgetd_client.core import Attribution
from budgetd_client.flows import Budgetd, Flow, Guard, Read, Send, Step, Tap, Tapper

T = TypeVar("T")
W = TypeVar("W")
log = logging.getLogger("budgetd_client")

Settle = Literal["inline", "background"]
SETTLE_QUEUE = 1_000
"""Settlements waiting for a background worker, at most (the app waits for room beyond)."""
SETTLE_WORKERS = 4
"""Background workers per transport (threads, or tasks on the app's event loop)."""
FLUSH_TIMEOUT_S = 30.0
"""How long ``close()`` waits for queued settlements; what is left then is logged and lost."""


def _checked(settle: str) -> Settle:
    if settle not in ("inline", "background"):
        raise ValueError(f"settle must be 'inline' or 'background', not {settle!r}")
    return cast(Settle, settle)


class _Reserves(Generic[W]):
    """The reserves a transport has in flight, for its background settler: **reserves first**.

    A worker that takes a settlement first waits for the reserves in flight at that moment,
    and only those: a snapshot, so later reserves never hold it back (no starvation) and each
    one it waits for is bounded by the client's deadline. Why (issue 13): the workers share
    budgetd's single worker, the client's connections and the app's event loop or GIL with the
    app's calls. A commit sent while another call's reserve is in flight puts its work (build,
    send, parse; budgetd's request) ahead of the answer that call is waiting for, so the
    reserve, on the app's critical path, pays for the commit that was taken off it. Sent once
    those reserves are answered, it runs while the calls wait for Claude, where the idle time
    is. Nothing else changes: the same commit, sent by the same worker, still flushed on close.

    ``W`` is what a worker waits on, one per reserve: a ``threading.Event`` (threads) or an
    ``asyncio.Future`` (tasks); ``answered`` marks it done when its reserve ends, however it
    ends. Inline settling has no settler and does no bookkeeping.
    """

    def __init__(self, flight: Callable[[], W], answered: Callable[[W], object]) -> None:
        self._flight = flight
        self._answered = answered
        self._flying: set[W] = set()
        self._lock = threading.Lock()

    @contextmanager
    def reserving(self) -> Iterator[None]:
        """Around one reserve: in flight from entry until it ends."""
        flight = self._flight()
        with self._lock:
            self._flying.add(flight)
        try:
            yield
        finally:
            with self._lock:
                self._flying.discard(flight)
            self._answered(flight)

    def now(self) -> list[W]:
        """The reserves in flight at this moment: what a settlement taken now waits for."""
        with self._lock:
            return list(self._flying)


class _Settler:
    """Runs settle flows on background threads, so the app's call returns before them."""

    def __init__(self, run: Callable[[Flow[Any]], Any], stats: Any) -> None:
        self._run = run
        self._stats = stats
        self._reset()
        _SETTLERS.add(self)

    def _reset(self) -> None:
        # After a fork, new: the parent's reserves in flight are not the child's to wait for
        # (their threads are not in the child), and another thread may have held the lock.
        self.reserves: _Reserves[threading.Event] = _Reserves(threading.Event, threading.Event.set)
        self._queue: queue.Queue[Flow[Any] | None] = queue.Queue(SETTLE_QUEUE)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, flow: Flow[Any]) -> None:
        with self._lock:
            if self._closed:  # after close(): settle inline, never lose it
                inline = True
            else:
                inline = False
                if not self._threads:
                    self._start()
        if inline:
            self._run(flow)
        else:
            self._queue.put(flow)  # blocks while the queue is full: back-pressure, no drop

    def _start(self) -> None:
        for n in range(SETTLE_WORKERS):
            thread = threading.Thread(target=self._work, name=f"budgetd-settle-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        atexit.register(self.close)

    def _work(self) -> None:
        while (flow := self._queue.get()) is not None:
            try:
                for reserve in self.reserves.now():  # reserves first (_Reserves)
                    reserve.wait()
                self._run(flow)
            except Exception:  # Guard.settle logs budgetd's errors; this is anything else
                self._stats.bump("settle_errors")
                log.exception("budgetd background settlement failed")

    def close(self) -> None:
        """Flush: wait for the queued settlements (up to ``FLUSH_TIMEOUT_S``), then stop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = self._threads
        if not threads:
            return
        atexit.unregister(self.close)
        for _ in threads:
            self._queue.put(None)
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        # Each live thread is still sending one flow and has left one stop marker queued.
        _lost(self._stats, self._queue.qsize() if any(t.is_alive() for t in threads) else 0)


_SETTLERS: weakref.WeakSet[_Settler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child has only the forking thread: the workers, whatever they held (a lock, a
    # half-taken queue) and the queued settlements stay the parent's, which sends them. The
    # child starts empty, or its calls would queue behind workers that do not exist.
    for settler in list(_SETTLERS):
        settler._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _AsyncSettler:
    """Runs settle flows on background tasks of the app's event loop (asyncio)."""

    def __init__(self, run: Callable[[Flow[Any]], Awaitable[Any]], stats: Any) -> None:
        self._run = run
        self._stats = stats
        self.reserves: _Reserves[asyncio.Future[None]] = _Reserves(
            lambda: asyncio.get_running_loop().create_future(), _resolve
        )
        self._queue: asyncio.Queue[Flow[Any]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._unsettled = 0
        """Flows submitted and not yet run to their end (queued or being sent)."""

    async def submit(self, flow: Flow[Any]) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue(SETTLE_QUEUE)
            self._tasks = [asyncio.create_task(self._work()) for _ in range(SETTLE_WORKERS)]
        self._unsettled += 1
        await self._queue.put(flow)  # waits while the queue is full: back-pressure, no drop

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            flow = await self._queue.get()
            try:
                await self._after_reserves()
                await self._run(flow)
            except Exception:  # Guard.settle logs budgetd's errors; this is anything else
                self._stats.bump("settle_errors")
                log.exception("budgetd background settlement failed")
            finally:
                self._unsettled -= 1
                self._queue.task_done()

    async def _after_reserves(self) -> None:
        """Reserves first (:class:`_Reserves`): those of this loop in flight now."""
        loop = asyncio.get_running_loop()
        pending = [f for f in self.reserves.now() if not f.done() and f.get_loop() is loop]
        if pending:
            await asyncio.wait(pending)

    async def aclose(self) -> None:
        """Flush: wait for the queued settlements (up to ``FLUSH_TIMEOUT_S``), then stop."""
        if self._queue is None:
            return
        with anyio.move_on_after(FLUSH_TIMEOUT_S):
            await self._queue.join()
        left = self._unsettled
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._queue, self._tasks = None, []
        _lost(self._stats, left)


def _resolve(answered: asyncio.Future[None]) -> None:
    answered.set_result(None)


def _lost(stats: Any, count: int) -> None:
    if count > 0:
        stats.bump("settle_errors", count)
        log.error(
            "budgetd: %d background settlements not sent within %.0f s of close (their holds "
            "expire on their lease; the usage is not recorded)",
            count,
            FLUSH_TIMEOUT_S,
        )


def _guard(
    budgetd: BudgetdClient | AsyncBudgetdClient,
    org: str,
    user: str | None,
    feature: str | None,
    session: str | None,
    metadata: Mapping[str, str] | None,
    count_tokens: bool,
    margin: float,
    tags: Sequence[str] = (),
) -> Guard:
    defaults = Attribution(
        user=user, feature=feature, session=session, metadata=metadata, tags=tuple(tags)
    )
    return Guard(
        org=org, defaults=defaults, stats=budgetd.stats, count_tokens=count_tokens, margin=margin
    )


class BudgetTransport(httpx2.BaseTransport):
    """Budgets the calls of a sync ``anthropic.Anthropic``.

    Args:
        budgetd: the budgetd client.
        org, user, feature, session, metadata: who calls are charged to by default (per call:
            ``x-budgetd-user`` / ``-feature`` / ``-session`` headers, ``metadata.user_id``,
            or a ``budgetd_client.scope()`` block).
        tags: tags of every call (at most 8 in all); a call's ``x-budgetd-tags`` header (comma-
            separated) and ``scope(tags=...)`` blocks add theirs.
        count_tokens: ask upstream ``count_tokens`` for the input figure (one more request
            per call) instead of holding the byte bound.
        margin: hold this fraction more input than the bound (0 by default: it is a bound).
        inner: the transport that reaches Anthropic (a new ``httpx2.HTTPTransport`` if None).
        settle: ``"inline"`` (default): the call returns once its commit is recorded.
            ``"background"``: it returns as soon as the response is read; the commit follows
            (see the module's docstring for what that changes; ``close()`` flushes).
    """

    def __init__(
        self,
        budgetd: BudgetdClient,
        *,
        org: str,
        user: str | None = None,
        feature: str | None = None,
        session: str | None = None,
        metadata: Mapping[str, str] | None = None,
        count_tokens: bool = False,
        margin: float = 0.0,
        inner: httpx2.BaseTransport | None = None,
        settle: Settle = "inline",
        tags: Sequence[str] = (),
    ) -> None:
        self.budgetd = budgetd
        self.guard = _guard(
            budgetd, org, user, feature, session, metadata, count_tokens, margin, tags
        )
        self.inner = inner or httpx2.HTTPTransport()
        self._settler = (
            _Settler(self.run, budgetd.stats) if _checked(settle) == "background" else None
        )

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        request.read()
        return self.run(self.guard.handle(request))

    def run(self, flow: Flow[T]) -> T:
        """Run a flow's steps to its result."""
        answer: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(answer)
            except StopIteration as done:
                return cast(T, done.value)
            answer, error = None, None
            try:
                answer = self._do(step)
            except BaseException as exc:
                error = exc

    def _do(self, step: Step) -> Any:
        if isinstance(step, Budgetd):
            if step.method == "reserve" and self._settler is not None:
                with self._settler.reserves.reserving():
                    return self.budgetd.reserve(**step.kwargs)
            return getattr(self.budgetd, step.method)(**step.kwargs)
        if isinstance(step, Send):
            return self.inner.handle_request(step.request)
        if isinstance(step, Read):
            return step.response.read()
        return _tapped(step, _SyncTapped(step, self._settle))

    def _settle(self, flow: Flow[Any]) -> None:
        if self._settler is None:
            self.run(flow)
        else:
            self._settler.submit(flow)

    def close(self) -> None:
        """Flush the background settlements (if any), then close the upstream transport."""
        try:
            if self._settler is not None:
                self._settler.close()
        finally:
            self.inner.close()


class AsyncBudgetTransport(httpx2.AsyncBaseTransport):
    """Budgets the calls of an ``anthropic.AsyncAnthropic``; see :class:`BudgetTransport`."""

    def __init__(
        self,
        budgetd: AsyncBudgetdClient,
        *,
        org: str,
        user: str | None = None,
        feature: str | None = None,
        session: str | None = None,
        metadata: Mapping[str, str] | None = None,
        count_tokens: bool = False,
        margin: float = 0.0,
        inner: httpx2.AsyncBaseTransport | None = None,
        settle: Settle = "inline",
        tags: Sequence[str] = (),
    ) -> None:
        self.budgetd = budgetd
        self.guard = _guard(
            budgetd, org, user, feature, session, metadata, count_tokens, margin, tags
        )
        self.inner = inner or httpx2.AsyncHTTPTransport()
        self._settler = (
            _AsyncSettler(self.run, budgetd.stats) if _checked(settle) == "background" else None
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        await request.aread()
        return await self.run(self.guard.handle(request))

    async def run(self, flow: Flow[T]) -> T:
        """Run a flow's steps to its result, awaiting each."""
        answer: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(answer)
            except StopIteration as done:
                return cast(T, done.value)
            answer, error = None, None
            try:
                answer = await self._do(step)
            except BaseException as exc:
                error = exc

    async def _do(self, step: Step) -> Any:
        if isinstance(step, Budgetd):
            if step.method == "reserve":
                if self._settler is None:
                    return await self.budgetd.reserve(**step.kwargs)
                with self._settler.reserves.reserving():
                    return await self.budgetd.reserve(**step.kwargs)
            # A settlement runs even in a task being cancelled (the app gave up on the call):
            # the hold must not wait for its lease.
            with anyio.CancelScope(shield=True):
                return await getattr(self.budgetd, step.method)(**step.kwargs)
        if isinstance(step, Send):
            return await self.inner.handle_async_request(step.request)
        if isinstance(step, Read):
            return await step.response.aread()
        assert isinstance(step, Tap)  # mypy cannot tell the shielded `with` never swallows
        return _tapped(step, _AsyncTapped(step, self._settle))

    async def _settle(self, flow: Flow[Any]) -> None:
        if self._settler is None:
            await self.run(flow)
        else:
            await self._settler.submit(flow)

    async def aclose(self) -> None:
        """Flush the background settlements (if any), then close the upstream transport."""
        try:
            if self._settler is not None:
                await self._settler.aclose()
        finally:
            await self.inner.aclose()


def _tapped(tap: Tap, stream: httpx2.SyncByteStream | httpx2.AsyncByteStream) -> httpx2.Response:
    return httpx2.Response(
        tap.response.status_code,
        headers=tap.response.headers.raw,
        stream=stream,
        extensions=tap.response.extensions,
    )


class _SyncTapped(httpx2.SyncByteStream):
    """The upstream body, fed to the tapper as the app reads it; settled when it ends, breaks
    or is closed (whichever comes first, once)."""

    def __init__(self, tap: Tap, run: Callable[[Flow[Any]], Any]) -> None:
        stream = tap.response.stream
        assert isinstance(stream, httpx2.SyncByteStream)
        self._inner = stream
        self._tapper = tap.tapper
        self._run = run
        self._ended = False

    def __iter__(self) -> Iterator[bytes]:
        complete = False
        try:
            for chunk in self._inner:
                flow = self._tapper.feed(chunk)
                if flow is not None:
                    self._run(flow)
                yield chunk
            complete = True
        finally:
            self._end(complete)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._end(False)

    def _end(self, complete: bool) -> None:
        if not self._ended:
            self._ended = True
            self._run(self._tapper.finish(complete))


class _AsyncTapped(httpx2.AsyncByteStream):
    """The async :class:`_SyncTapped`. Settling is shielded from cancellation: a task cancelled
    mid-stream still commits what the stream reported."""

    def __init__(self, tap: Tap, run: Callable[[Flow[Any]], Any]) -> None:
        stream = tap.response.stream
        assert isinstance(stream, httpx2.AsyncByteStream)
        self._inner = stream
        self._tapper: Tapper = tap.tapper
        self._run = run
        self._ended = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        complete = False
        try:
            async for chunk in self._inner:
                flow = self._tapper.feed(chunk)
                if flow is not None:
                    await self._run(flow)
                yield chunk
            complete = True
        finally:
            await self._end(complete)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            await self._end(False)

    async def _end(self, complete: bool) -> None:
        if not self._ended:
            self._ended = True
            with anyio.CancelScope(shield=True):
                await self._run(self._tapper.finish(complete))


class ClientTransport(httpx2.BaseTransport):
    """An ``httpx2.Client`` used as a transport: how ``guard()`` keeps the client the app
    configured (its transport, proxies, limits) underneath the budget."""

    def __init__(self, client: httpx2.Client) -> None:
        self.client = client

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self.client.send(request, stream=True)
        return httpx2.Response(
            response.status_code,
            headers=response.headers.raw,
            stream=response.stream,
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.client.close()


class AsyncClientTransport(httpx2.AsyncBaseTransport):
    """An ``httpx2.AsyncClient`` used as a transport; see :class:`ClientTransport`."""

    def __init__(self, client: httpx2.AsyncClient) -> None:
        self.client = client

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.client.send(request, stream=True)
        return httpx2.Response(
            response.status_code,
            headers=response.headers.raw,
            stream=response.stream,
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.client.aclose()
