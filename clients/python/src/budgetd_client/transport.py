"""httpx2 transports that budget every Messages API call the Anthropic SDK sends.

Give one to the SDK's own HTTP client and every path that reaches ``POST /v1/messages`` or the
batches endpoints is budgeted, whatever method the app called (``with_options``, ``beta``,
``with_raw_response``, streams, tool runners, batches)::

    transport = BudgetTransport(BudgetdClient(url), org="acme", user="alice")
    claude = anthropic.Anthropic(http_client=httpx2.Client(transport=transport))

(The Anthropic SDK is built on ``httpx2``, so these are ``httpx2`` transports.)
Both classes only run the steps of :mod:`budgetd_client.flows`; the async one awaits them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, TypeVar, cast

import anyio
import httpx2

from budgetd_client.client import AsyncBudgetdClient, BudgetdClient
from budgetd_client.core import Attribution
from budgetd_client.flows import Budgetd, Flow, Guard, Read, Send, Step, Tap, Tapper

T = TypeVar("T")


def _guard(
    budgetd: BudgetdClient | AsyncBudgetdClient,
    org: str,
    user: str | None,
    feature: str | None,
    session: str | None,
    metadata: Mapping[str, str] | None,
    count_tokens: bool,
    margin: float,
) -> Guard:
    defaults = Attribution(user=user, feature=feature, session=session, metadata=metadata)
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
        count_tokens: ask upstream ``count_tokens`` for the input figure (one more request
            per call) instead of holding the byte bound.
        margin: hold this fraction more input than the bound (0 by default: it is a bound).
        inner: the transport that reaches Anthropic (a new ``httpx2.HTTPTransport`` if None).
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
    ) -> None:
        self.budgetd = budgetd
        self.guard = _guard(budgetd, org, user, feature, session, metadata, count_tokens, margin)
        self.inner = inner or httpx2.HTTPTransport()

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
            return getattr(self.budgetd, step.method)(**step.kwargs)
        if isinstance(step, Send):
            return self.inner.handle_request(step.request)
        if isinstance(step, Read):
            return step.response.read()
        return _tapped(step, _SyncTapped(step, self.run))

    def close(self) -> None:
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
    ) -> None:
        self.budgetd = budgetd
        self.guard = _guard(budgetd, org, user, feature, session, metadata, count_tokens, margin)
        self.inner = inner or httpx2.AsyncHTTPTransport()

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
        return _tapped(step, _AsyncTapped(step, self.run))

    async def aclose(self) -> None:
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
