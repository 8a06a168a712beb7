"""Sync and async clients for every budgetd endpoint: two thin shells over the flows of
:class:`budgetd_client._core.Base` (each endpoint written once, run with plain calls or with
``await``).

Connections: budgetd's calls go over the client's own keep-alive pool (``_wire``: the stdlib's
``http.client`` for the sync client, ``aiohttp`` for the async one; a fraction of httpx's cost
per request, which is on the path of every Claude call). Pass ``http_client`` or ``transport``
to use httpx instead (proxies, mounts, test transports).

Retries: every call is retried on a connection error, a timeout or a 5xx, up to ``retries``
more times, with exponential backoff and jitter (stamina), all within ``deadline_s`` (3 s by
default: well under any Claude call's own timeout, so a guard never holds a call up for long).
That is safe for reserve and commit because the reservation id is chosen here before the first
attempt: a retry of a request that did reach budgetd (only its answer was lost) is answered as
a replay, never as a second hold or charge.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
import httpx

from budgetd_client._core import (
    Base,
    CacheTTL,
    FailMode,
    Flow,
    Http,
    Speed,
    Unreachable,
)
from budgetd_client._wire import POOL_SIZE, WireError, async_wire, sync_wire

__all__ = ["AsyncBudgetdClient", "BudgetdClient", "CacheTTL", "Speed"]

T = TypeVar("T")
P = ParamSpec("P")
DEFAULT_TIMEOUT = httpx.Timeout(5.0, connect=1.0)
DEFAULT_DEADLINE_S = 3.0


def _sync(
    flow: Callable[Concatenate[Base, P], Flow[T]],
) -> Callable[Concatenate[BudgetdClient, P], T]:
    @functools.wraps(flow)
    def call(self: BudgetdClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.run(flow(self, *args, **kwargs))

    return call


def _async(
    flow: Callable[Concatenate[Base, P], Flow[T]],
) -> Callable[Concatenate[AsyncBudgetdClient, P], Awaitable[T]]:
    @functools.wraps(flow)
    async def call(self: AsyncBudgetdClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.run(flow(self, *args, **kwargs))

    return call


class BudgetdClient(Base):
    """Blocking client.

    Args:
        base_url: where budgetd listens, e.g. ``http://127.0.0.1:8080``.
        api_key: the org's key (``budgetd keys new``); None when authentication is off.
        org: default org for calls that do not name one.
        fail_mode: ``"closed"`` (default): when budgetd cannot be reached, ``reserve`` raises
            ``ServiceUnavailable`` and no Claude call should be made. ``"open"``: ``reserve``
            returns a local ``Grant`` with ``degraded=True`` and nothing held; its commit tries
            budgetd again and records the usage through ``/v1/usage``.
        retries: extra attempts after a connection error, timeout or 5xx.
        backoff_s: first retry delay (plus up to as much jitter); doubled on each further retry.
        deadline_s: the most all attempts of one call may take together.
        timeout: per-attempt timeout (seconds, or an ``httpx.Timeout``: its connect and read).
        http_client: your own ``httpx.Client`` (its base URL is ignored); ``transport`` to only
            swap the transport. Either makes the client use httpx instead of its own pool.
        pool_size: idle keep-alive connections kept (more open while more calls are in flight).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        *,
        api_key: str | None = None,
        org: str | None = None,
        fail_mode: FailMode = "closed",
        retries: int = 2,
        backoff_s: float = 0.05,
        deadline_s: float = DEFAULT_DEADLINE_S,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        http_client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        pool_size: int = POOL_SIZE,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            org=org,
            fail_mode=fail_mode,
            retries=retries,
            backoff_s=backoff_s,
            deadline_s=deadline_s,
        )
        self._wire = sync_wire(self.base_url, timeout, http_client, transport, pool_size)

    def close(self) -> None:
        self._wire.close()

    def __enter__(self) -> BudgetdClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def run(self, flow: Flow[T]) -> T:
        """Run a flow: each HTTP call it yields is made (with retries) and answered."""
        answer: Any = None
        error: BaseException | None = None
        while True:
            try:
                http = flow.throw(error) if error is not None else flow.send(answer)
            except StopIteration as done:
                result: T = done.value
                return result
            answer, error = None, None
            try:
                answer = self._call(http)
            except Exception as exc:
                error = exc

    def _call(self, http: Http) -> Any:
        started = time.monotonic()
        try:
            return self._once(http, 1)
        except Unreachable as first:
            wait = self._first_retry_in(started)
            if wait is None:
                raise self._gave_up(http, first) from None
        time.sleep(wait)
        try:
            for attempt in self._retrying(started):
                with attempt:
                    return self._once(http, attempt.num + 1)
        except Unreachable as last:
            raise self._gave_up(http, last) from None
        raise AssertionError("stamina made no attempt")  # pragma: no cover

    def _once(self, http: Http, number: int) -> Any:
        self._attempt(number)
        try:
            response = self._wire.request(
                http.method, http.path, body=http.body, params=http.params, headers=self._headers
            )
        except WireError as exc:
            raise self._failed(http, exc) from exc
        return self._answer(http, response)

    reserve = _sync(Base.reserve_flow)
    commit = _sync(Base.commit_flow)
    release = _sync(Base.release_flow)
    record_usage = _sync(Base.record_flow)
    adjust = _sync(Base.adjust_flow)
    cost = _sync(Base.cost_flow)
    budgets = _sync(Base.budgets_flow)

    def healthy(self) -> bool:
        """``/readyz`` answered 2xx (store reachable, policy loaded)."""
        try:
            response = self._wire.request(
                "GET", "/readyz", body=None, params=None, headers=self._headers
            )
        except WireError:
            return False
        return 200 <= response.status_code < 300


class AsyncBudgetdClient(Base):
    """The asyncio :class:`BudgetdClient`: same arguments, same behaviour."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        *,
        api_key: str | None = None,
        org: str | None = None,
        fail_mode: FailMode = "closed",
        retries: int = 2,
        backoff_s: float = 0.05,
        deadline_s: float = DEFAULT_DEADLINE_S,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            org=org,
            fail_mode=fail_mode,
            retries=retries,
            backoff_s=backoff_s,
            deadline_s=deadline_s,
        )
        self._wire = async_wire(self.base_url, timeout, http_client, transport)

    async def aclose(self) -> None:
        await self._wire.aclose()

    async def __aenter__(self) -> AsyncBudgetdClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def run(self, flow: Flow[T]) -> T:
        """Run a flow, awaiting each HTTP call it yields."""
        answer: Any = None
        error: BaseException | None = None
        while True:
            try:
                http = flow.throw(error) if error is not None else flow.send(answer)
            except StopIteration as done:
                result: T = done.value
                return result
            answer, error = None, None
            try:
                answer = await self._call(http)
            except Exception as exc:
                error = exc

    async def _call(self, http: Http) -> Any:
        started = time.monotonic()
        try:
            return await self._once(http, 1)
        except Unreachable as first:
            wait = self._first_retry_in(started)
            if wait is None:
                raise self._gave_up(http, first) from None
        await anyio.sleep(wait)
        try:
            async for attempt in self._retrying(started):
                with attempt:
                    return await self._once(http, attempt.num + 1)
        except Unreachable as last:
            raise self._gave_up(http, last) from None
        raise AssertionError("stamina made no attempt")  # pragma: no cover

    async def _once(self, http: Http, number: int) -> Any:
        self._attempt(number)
        try:
            response = await self._wire.request(
                http.method, http.path, body=http.body, params=http.params, headers=self._headers
            )
        except WireError as exc:
            raise self._failed(http, exc) from exc
        return self._answer(http, response)

    reserve = _async(Base.reserve_flow)
    commit = _async(Base.commit_flow)
    release = _async(Base.release_flow)
    record_usage = _async(Base.record_flow)
    adjust = _async(Base.adjust_flow)
    cost = _async(Base.cost_flow)
    budgets = _async(Base.budgets_flow)

    async def healthy(self) -> bool:
        """See :meth:`BudgetdClient.healthy`."""
        try:
            response = await self._wire.request(
                "GET", "/readyz", body=None, params=None, headers=self._headers
            )
        except WireError:
            return False
        return 200 <= response.status_code < 300
