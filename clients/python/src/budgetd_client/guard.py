"""``guard(anthropic_client, ...)``: the same ``messages.create`` / ``messages.stream`` surface,
with every call reserved before, committed after and released on failure.

* Before: reserve with the request's ``model`` and ``max_tokens``, an input estimate (the
  heuristic in :mod:`budgetd_client.estimate`, or ``messages.count_tokens`` when
  ``count_tokens=True``), the cache TTL its ``cache_control`` blocks write, and its
  ``inference_geo`` / ``speed`` / web-search ``max_uses``. ``BudgetExceeded`` propagates and
  the Anthropic call is never made.
* After: commit the response's ``usage`` verbatim, priced at the response's ``model``.
* Streams: commit the final cumulative usage (the ``message_start`` usage, overwritten field by
  field by each ``message_delta`` usage: those are running totals, the last one wins) when the
  stream ends, is closed early, or breaks; the tokens produced so far are spent.
* An error before any token was produced (the request failed, or a stream broke before
  ``message_start``): release.
* Commit and release failures after a call are logged and counted
  (``client.stats.settle_errors``), never raised: the response is already paid for.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping
from types import TracebackType
from typing import Any, overload

from budgetd_client._core import log, usage_dict
from budgetd_client.client import AsyncBudgetdClient, BudgetdClient
from budgetd_client.core.calls import cache_ttl_of, web_searches_of
from budgetd_client.estimate import estimate_input_tokens
from budgetd_client.reservation import (
    AsyncBudget,
    AsyncReservation,
    Budget,
    Reservation,
    Scope,
    scope,
)

_COUNT_KEYS = ("messages", "model", "system", "tools", "tool_choice", "thinking", "speed")
_BUDGET_KEYS = ("budget_user", "budget_feature", "budget_metadata")
DEFAULT_MARGIN = 0.0
"""Extra fraction held on top of the input bound."""


def present(kwargs: Mapping[str, Any], key: str) -> Any:
    """``kwargs[key]`` unless absent, None, or one of the SDK's omit sentinels."""
    value = kwargs.get(key)
    if value is None or type(value).__name__ in ("Omit", "NotGiven", "Omit_"):
        return None
    return value


class _Plan:
    """The reserve arguments read off one ``messages.create`` / ``stream`` call."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.override = Scope(
            user=kwargs.pop("budget_user", None),
            feature=kwargs.pop("budget_feature", None),
            metadata=kwargs.pop("budget_metadata", None),
        )
        self.kwargs = kwargs
        if "model" not in kwargs or "max_tokens" not in kwargs:
            raise TypeError("messages.create needs model= and max_tokens=")
        self.model = str(kwargs["model"])
        self.max_tokens = int(kwargs["max_tokens"])
        self.cache_ttl = cache_ttl_of(kwargs)
        geo = present(kwargs, "inference_geo")
        self.inference_geo = str(geo) if geo is not None else None
        speed = present(kwargs, "speed")
        self.speed = speed if speed in ("standard", "fast") else None
        self.web_searches = web_searches_of(present(kwargs, "tools"))

    def heuristic(self, margin: float) -> int:
        return estimate_input_tokens(
            messages=present(self.kwargs, "messages") or (),
            system=present(self.kwargs, "system"),
            tools=present(self.kwargs, "tools"),
            margin=margin,
        )

    def count_args(self) -> dict[str, Any]:
        return {k: self.kwargs[k] for k in _COUNT_KEYS if present(self.kwargs, k) is not None}

    def reserve_args(self, input_tokens: int) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_tokens": input_tokens,
            "max_tokens": self.max_tokens,
            "override": self.override,
            "cache_ttl": self.cache_ttl,
            "inference_geo": self.inference_geo,
            "speed": self.speed,
            "web_searches": self.web_searches,
        }


class _Tracker:
    """The cumulative usage of a stream so far."""

    def __init__(self) -> None:
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None

    def observe(self, event: Any) -> None:
        kind = getattr(event, "type", None)
        if kind == "message_start":
            message = event.message
            self.model = getattr(message, "model", None)
            self.usage = usage_dict(message.usage)
        elif kind == "message_delta" and self.usage is not None:
            # message_delta usage is a running total: overwrite, never add. Fields it omits
            # (or sends as null) keep their message_start value.
            for key, value in usage_dict(event.usage).items():
                if value is not None:
                    self.usage[key] = value


# -- sync ------------------------------------------------------------------------------------


class GuardedStream:
    """Wraps the SDK's ``Stream`` (``messages.create(stream=True)``)."""

    def __init__(self, inner: Any, reservation: Reservation) -> None:
        self._inner = inner
        self._reservation = reservation
        self._tracker = _Tracker()
        self._iterator = self._events()

    def _events(self) -> Generator[Any, None, None]:
        try:
            for event in self._inner:
                self._tracker.observe(event)
                yield event
        finally:
            # Reached on the end of the stream, on an error mid-way, and on an early close.
            self._settle()

    def _settle(self) -> None:
        self._reservation.settle(self._tracker.usage, model=self._tracker.model)

    @property
    def reservation(self) -> Reservation:
        return self._reservation

    def __iter__(self) -> Iterator[Any]:
        return self._iterator

    def __next__(self) -> Any:
        return next(self._iterator)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._iterator.close()
            self._settle()

    def __enter__(self) -> GuardedStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class GuardedMessageStream(GuardedStream):
    """Wraps the SDK's ``MessageStream`` (``with messages.stream(...) as stream``)."""

    def __init__(self, inner: Any, reservation: Reservation) -> None:
        super().__init__(inner, reservation)
        self.text_stream = self._texts()

    def _texts(self) -> Iterator[str]:
        for event in self:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                yield event.delta.text

    def until_done(self) -> None:
        for _ in self:
            pass

    def get_final_message(self) -> Any:
        self.until_done()
        return self._inner.get_final_message()

    def get_final_text(self) -> str:
        self.until_done()
        return str(self._inner.get_final_text())


class GuardedStreamManager:
    """What ``messages.stream(...)`` returns: reserves on ``__enter__`` (where the SDK makes
    its request), settles on ``__exit__``."""

    def __init__(self, messages: GuardedMessages, plan: _Plan) -> None:
        self._messages = messages
        self._plan = plan
        self._manager: Any = None
        self._stream: GuardedMessageStream | None = None

    def __enter__(self) -> GuardedMessageStream:
        reservation = self._messages._reserve(self._plan)
        try:
            self._manager = self._messages._inner.stream(**self._plan.kwargs)
            inner = self._manager.__enter__()
        except BaseException:
            reservation.settle(None)
            raise
        self._stream = GuardedMessageStream(inner, reservation)
        return self._stream

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._manager is not None:
                self._manager.__exit__(exc_type, exc, tb)
        finally:
            if self._stream is not None:
                self._stream.close()


class GuardedMessages:
    """``client.messages`` with budgets. Per-call ``budget_user=``, ``budget_feature=`` and
    ``budget_metadata=`` override the guard's scope (Anthropic's own ``metadata=`` is untouched).
    """

    def __init__(self, inner: Any, budget: Budget, *, count_tokens: bool, margin: float) -> None:
        self._inner = inner
        self._budget = budget
        self._count_tokens = count_tokens
        self._margin = margin

    def _input_tokens(self, plan: _Plan) -> int:
        if self._count_tokens:
            try:
                return int(self._inner.count_tokens(**plan.count_args()).input_tokens)
            except Exception as exc:  # the estimate is good enough to reserve with
                log.warning("count_tokens failed, using the heuristic estimate: %r", exc)
        return plan.heuristic(self._margin)

    def _reserve(self, plan: _Plan) -> Reservation:
        return self._budget.reserve(**plan.reserve_args(self._input_tokens(plan)))

    def create(self, **kwargs: Any) -> Any:
        plan = _Plan(kwargs)
        reservation = self._reserve(plan)
        try:
            result = self._inner.create(**plan.kwargs)
        except BaseException:
            reservation.settle(None)
            raise
        if present(plan.kwargs, "stream"):
            return GuardedStream(result, reservation)
        reservation.settle(result.usage, model=result.model)
        return result

    def parse(self, **kwargs: Any) -> Any:
        plan = _Plan(kwargs)
        reservation = self._reserve(plan)
        try:
            result = self._inner.parse(**plan.kwargs)
        except BaseException:
            reservation.settle(None)
            raise
        reservation.settle(result.usage, model=result.model)
        return result

    def stream(self, **kwargs: Any) -> GuardedStreamManager:
        return GuardedStreamManager(self, _Plan(kwargs))

    def __getattr__(self, name: str) -> Any:
        if name in ("with_raw_response", "with_streaming_response"):
            raise AttributeError(f"messages.{name} is not guarded; use the unwrapped client")
        return getattr(self._inner, name)  # count_tokens, batches: no spend to guard


class GuardedAnthropic:
    """An ``anthropic.Anthropic`` whose ``messages`` are guarded; other attributes are the
    wrapped client's, unguarded (``beta.messages`` included)."""

    def __init__(
        self,
        client: Any,
        budget: Budget,
        *,
        count_tokens: bool = False,
        margin: float = DEFAULT_MARGIN,
    ) -> None:
        self.unwrapped = client
        self.budget = budget
        self.messages = GuardedMessages(
            client.messages, budget, count_tokens=count_tokens, margin=margin
        )

    scope = staticmethod(scope)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.unwrapped, name)


# -- async -----------------------------------------------------------------------------------


class AsyncGuardedStream:
    """Wraps the SDK's ``AsyncStream`` (``await messages.create(stream=True)``)."""

    def __init__(self, inner: Any, reservation: AsyncReservation) -> None:
        self._inner = inner
        self._reservation = reservation
        self._tracker = _Tracker()
        self._iterator = self._events()

    async def _events(self) -> AsyncGenerator[Any, None]:
        try:
            async for event in self._inner:
                self._tracker.observe(event)
                yield event
        finally:
            await self._settle()

    async def _settle(self) -> None:
        await self._reservation.settle(self._tracker.usage, model=self._tracker.model)

    @property
    def reservation(self) -> AsyncReservation:
        return self._reservation

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterator

    async def __anext__(self) -> Any:
        return await self._iterator.__anext__()

    async def close(self) -> None:
        try:
            await self._inner.close()
        finally:
            await self._iterator.aclose()
            await self._settle()

    async def __aenter__(self) -> AsyncGuardedStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class AsyncGuardedMessageStream(AsyncGuardedStream):
    """Wraps the SDK's ``AsyncMessageStream``."""

    def __init__(self, inner: Any, reservation: AsyncReservation) -> None:
        super().__init__(inner, reservation)
        self.text_stream = self._texts()

    async def _texts(self) -> AsyncIterator[str]:
        async for event in self:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                yield event.delta.text

    async def until_done(self) -> None:
        async for _ in self:
            pass

    async def get_final_message(self) -> Any:
        await self.until_done()
        return await self._inner.get_final_message()

    async def get_final_text(self) -> str:
        await self.until_done()
        return str(await self._inner.get_final_text())


class AsyncGuardedStreamManager:
    def __init__(self, messages: AsyncGuardedMessages, plan: _Plan) -> None:
        self._messages = messages
        self._plan = plan
        self._manager: Any = None
        self._stream: AsyncGuardedMessageStream | None = None

    async def __aenter__(self) -> AsyncGuardedMessageStream:
        reservation = await self._messages._reserve(self._plan)
        try:
            self._manager = self._messages._inner.stream(**self._plan.kwargs)
            inner = await self._manager.__aenter__()
        except BaseException:
            await reservation.settle(None)
            raise
        self._stream = AsyncGuardedMessageStream(inner, reservation)
        return self._stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._manager is not None:
                await self._manager.__aexit__(exc_type, exc, tb)
        finally:
            if self._stream is not None:
                await self._stream.close()


class AsyncGuardedMessages:
    """The asyncio twin of :class:`GuardedMessages`."""

    def __init__(
        self, inner: Any, budget: AsyncBudget, *, count_tokens: bool, margin: float
    ) -> None:
        self._inner = inner
        self._budget = budget
        self._count_tokens = count_tokens
        self._margin = margin

    async def _input_tokens(self, plan: _Plan) -> int:
        if self._count_tokens:
            try:
                counted = await self._inner.count_tokens(**plan.count_args())
                return int(counted.input_tokens)
            except Exception as exc:
                log.warning("count_tokens failed, using the heuristic estimate: %r", exc)
        return plan.heuristic(self._margin)

    async def _reserve(self, plan: _Plan) -> AsyncReservation:
        return await self._budget.reserve(**plan.reserve_args(await self._input_tokens(plan)))

    async def create(self, **kwargs: Any) -> Any:
        plan = _Plan(kwargs)
        reservation = await self._reserve(plan)
        try:
            result = await self._inner.create(**plan.kwargs)
        except BaseException:
            await reservation.settle(None)
            raise
        if present(plan.kwargs, "stream"):
            return AsyncGuardedStream(result, reservation)
        await reservation.settle(result.usage, model=result.model)
        return result

    async def parse(self, **kwargs: Any) -> Any:
        plan = _Plan(kwargs)
        reservation = await self._reserve(plan)
        try:
            result = await self._inner.parse(**plan.kwargs)
        except BaseException:
            await reservation.settle(None)
            raise
        await reservation.settle(result.usage, model=result.model)
        return result

    def stream(self, **kwargs: Any) -> AsyncGuardedStreamManager:
        return AsyncGuardedStreamManager(self, _Plan(kwargs))

    def __getattr__(self, name: str) -> Any:
        if name in ("with_raw_response", "with_streaming_response"):
            raise AttributeError(f"messages.{name} is not guarded; use the unwrapped client")
        return getattr(self._inner, name)


class AsyncGuardedAnthropic:
    """An ``anthropic.AsyncAnthropic`` whose ``messages`` are guarded."""

    def __init__(
        self,
        client: Any,
        budget: AsyncBudget,
        *,
        count_tokens: bool = False,
        margin: float = DEFAULT_MARGIN,
    ) -> None:
        self.unwrapped = client
        self.budget = budget
        self.messages = AsyncGuardedMessages(
            client.messages, budget, count_tokens=count_tokens, margin=margin
        )

    scope = staticmethod(scope)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.unwrapped, name)


def _is_async(anthropic_client: Any) -> bool:
    create = inspect.unwrap(anthropic_client.messages.create)
    return inspect.iscoroutinefunction(create) or type(anthropic_client).__name__.startswith(
        "Async"
    )


@overload
def guard(
    anthropic_client: Any,
    *,
    budgetd: BudgetdClient,
    org: str,
    user: str | None = None,
    feature: str | None = None,
    metadata: Mapping[str, str] | None = None,
    count_tokens: bool = False,
    margin: float = DEFAULT_MARGIN,
) -> GuardedAnthropic: ...


@overload
def guard(
    anthropic_client: Any,
    *,
    budgetd: AsyncBudgetdClient,
    org: str,
    user: str | None = None,
    feature: str | None = None,
    metadata: Mapping[str, str] | None = None,
    count_tokens: bool = False,
    margin: float = DEFAULT_MARGIN,
) -> AsyncGuardedAnthropic: ...


@overload
def guard(
    anthropic_client: Any,
    *,
    budgetd: str,
    org: str,
    user: str | None = None,
    feature: str | None = None,
    metadata: Mapping[str, str] | None = None,
    count_tokens: bool = False,
    margin: float = DEFAULT_MARGIN,
) -> GuardedAnthropic | AsyncGuardedAnthropic: ...


def guard(
    anthropic_client: Any,
    *,
    budgetd: BudgetdClient | AsyncBudgetdClient | str,
    org: str,
    user: str | None = None,
    feature: str | None = None,
    metadata: Mapping[str, str] | None = None,
    count_tokens: bool = False,
    margin: float = DEFAULT_MARGIN,
) -> GuardedAnthropic | AsyncGuardedAnthropic:
    """Wrap an ``anthropic.Anthropic`` (→ :class:`GuardedAnthropic`) or ``AsyncAnthropic``
    (→ :class:`AsyncGuardedAnthropic`).

    Args:
        budgetd: a client of the matching kind (sync for ``Anthropic``, async for
            ``AsyncAnthropic``), or a URL to build one (``fail_mode="closed"``).
        org, user, feature, metadata: who every call is charged to by default; override per
            call with ``budget_user=`` / ``budget_feature=`` / ``budget_metadata=`` or for a
            block with ``guarded.scope(user=...)``.
        count_tokens: ask ``messages.count_tokens`` for the input estimate (one extra request
            per call) instead of the chars/4 heuristic.
        margin: the heuristic's safety margin (0.10 = +10 %).
    """
    meta = dict(metadata) if metadata else None
    is_async = (
        isinstance(budgetd, AsyncBudgetdClient)
        if not isinstance(budgetd, str)
        else _is_async(anthropic_client)
    )
    if is_async:
        client = AsyncBudgetdClient(budgetd) if isinstance(budgetd, str) else budgetd
        assert isinstance(client, AsyncBudgetdClient)
        abudget = AsyncBudget(client, org=org, user=user, feature=feature, metadata=meta)
        return AsyncGuardedAnthropic(
            anthropic_client, abudget, count_tokens=count_tokens, margin=margin
        )
    sclient = BudgetdClient(budgetd) if isinstance(budgetd, str) else budgetd
    assert isinstance(sclient, BudgetdClient)
    budget = Budget(sclient, org=org, user=user, feature=feature, metadata=meta)
    return GuardedAnthropic(anthropic_client, budget, count_tokens=count_tokens, margin=margin)
