"""Reserve / commit / release around code that calls Claude some other way.

    budget = Budget(client, org="acme", user="alice", feature="chat")
    with budget.reservation(model=m, input_tokens=900, max_tokens=1024) as r:
        response = call_claude_somehow()
        r.commit(response.usage, model=response.model)

Leaving the block by an exception releases the hold (unless it was committed); leaving it
normally without a commit also releases it, with a warning, since nothing says what was spent.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

from budgetd_client._core import Flow
from budgetd_client.client import AsyncBudgetdClient, BudgetdClient, CacheTTL, Speed
from budgetd_client.core import Attribution
from budgetd_client.errors import BudgetdError
from budgetd_client.types import CommitResult, Grant, ReleaseResult

log = logging.getLogger("budgetd_client")
P = ParamSpec("P")
R = TypeVar("R")


Scope = Attribution
"""Who a call is charged to (user, feature, session, metadata); unset fields fall back to the
outer scope. The same type the core reads attribution into."""

_SCOPE: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "budgetd_client_scope", default=None
)


def current_scope() -> Scope:
    """The attribution of the enclosing ``scope()`` blocks (empty outside any)."""
    return _SCOPE.get() or Scope()


@contextlib.contextmanager
def scope(
    *,
    user: str | None = None,
    feature: str | None = None,
    session: str | None = None,
    metadata: dict[str, str] | None = None,
    tags: Sequence[str] = (),
) -> Iterator[Scope]:
    """Charge every guarded call (and ``reservation``) inside the block to this user, feature
    or session, with these tags (added to the enclosing blocks'). A ``contextvars`` variable:
    it follows threads' and tasks' own contexts, and nests."""
    inner = Scope(
        user=user, feature=feature, session=session, metadata=metadata, tags=tuple(tags)
    ).over(current_scope())
    token = _SCOPE.set(inner)
    try:
        yield inner
    finally:
        _SCOPE.reset(token)


def usage_of(result: Any) -> tuple[Any, str | None]:
    """(usage, model) of a Message-like result (an object or a mapping)."""
    if isinstance(result, Mapping):
        return result.get("usage"), result.get("model")
    return getattr(result, "usage", None), getattr(result, "model", None)


class _Handle:
    """A granted hold and the flows that resolve it (run by either client)."""

    def __init__(
        self, client: BudgetdClient | AsyncBudgetdClient, grant: Grant, org: str, model: str
    ) -> None:
        self._base = client
        self.grant = grant
        self.org = org
        self.model = model
        self.result: CommitResult | ReleaseResult | None = None

    @property
    def id(self) -> str:
        return self.grant.reservation_id

    @property
    def degraded(self) -> bool:
        return self.grant.degraded

    @property
    def resolved(self) -> bool:
        return self.result is not None

    def _commit(self, usage: Any, model: str | None, batch: bool) -> Flow[CommitResult]:
        result = yield from self._base.commit_flow(
            self.id, usage, model=model, batch=batch, org=self.org
        )
        self.result = result
        return result

    def _release(self) -> Flow[ReleaseResult]:
        result = yield from self._base.release_flow(self.id, org=self.org)
        self.result = result
        return result

    def _settle(self, usage: Any | None, model: str | None) -> Flow[None]:
        if self.resolved:
            return
        try:
            if usage is None:
                yield from self._release()
            else:
                yield from self._commit(usage, model, False)
        except BudgetdError as exc:
            self.result = self.result or ReleaseResult(
                reservation_id=self.id, state="error", released_micros=0
            )
            self._base.stats.bump("settle_errors")
            log.error(
                "budgetd %s of reservation %s failed (the hold expires on its lease): %s; usage=%r",
                "release" if usage is None else "commit",
                self.id,
                exc,
                usage,
            )


class Reservation(_Handle):
    """A granted hold; commit it with the response's usage, or release it."""

    def __init__(self, client: BudgetdClient, grant: Grant, org: str, model: str) -> None:
        super().__init__(client, grant, org, model)
        self._client = client

    def commit(self, usage: Any, *, model: str | None = None, batch: bool = False) -> CommitResult:
        """Settle with ``usage`` exactly as the API returned it (model: the response's)."""
        return self._client.run(self._commit(usage, model, batch))

    def release(self) -> ReleaseResult:
        return self._client.run(self._release())

    def settle(self, usage: Any | None, *, model: str | None = None) -> None:
        """Commit ``usage``, or release when None; never raises (logged and counted). Used
        after a Claude call, where failing would lose a response that is already paid for."""
        self._client.run(self._settle(usage, model))


class AsyncReservation(_Handle):
    """The asyncio :class:`Reservation`."""

    def __init__(self, client: AsyncBudgetdClient, grant: Grant, org: str, model: str) -> None:
        super().__init__(client, grant, org, model)
        self._client = client

    async def commit(
        self, usage: Any, *, model: str | None = None, batch: bool = False
    ) -> CommitResult:
        return await self._client.run(self._commit(usage, model, batch))

    async def release(self) -> ReleaseResult:
        return await self._client.run(self._release())

    async def settle(self, usage: Any | None, *, model: str | None = None) -> None:
        await self._client.run(self._settle(usage, model))


class _BudgetBase:
    def __init__(
        self,
        *,
        org: str,
        user: str | None,
        feature: str | None,
        metadata: dict[str, str] | None,
        session: str | None = None,
    ) -> None:
        self.org = org
        self.defaults = Scope(user=user, feature=feature, session=session, metadata=metadata)

    def current(self, override: Scope | None = None) -> Scope:
        """Defaults < the enclosing ``scope()`` blocks < a per-call override."""
        effective = current_scope().over(self.defaults)
        return override.over(effective) if override else effective

    scope = staticmethod(scope)

    def _reserve(
        self,
        client: BudgetdClient | AsyncBudgetdClient,
        override: Scope | None,
        fields: dict[str, Any],
    ) -> Flow[Grant]:
        who = self.current(override)
        return client.reserve_flow(
            org=self.org,
            user=who.user,
            feature=who.feature,
            session=who.session,
            metadata=who.reserve_metadata(),
            tags=list(who.tags),
            **fields,
        )


class Budget(_BudgetBase):
    """A budgetd client bound to an org (and default user / feature / session)."""

    def __init__(
        self,
        client: BudgetdClient,
        *,
        org: str,
        user: str | None = None,
        feature: str | None = None,
        metadata: dict[str, str] | None = None,
        session: str | None = None,
    ) -> None:
        super().__init__(org=org, user=user, feature=feature, metadata=metadata, session=session)
        self.client = client

    def reserve(
        self,
        *,
        model: str,
        input_tokens: int,
        max_tokens: int,
        override: Scope | None = None,
        reservation_id: str | None = None,
        ttl_s: int | None = None,
        cache_ttl: CacheTTL | None = None,
        batch: bool = False,
        inference_geo: str | None = None,
        speed: Speed | None = None,
        web_searches: int = 0,
    ) -> Reservation:
        """Reserve and return the handle (no context manager: you settle it)."""
        fields = {
            "model": model,
            "input_tokens": input_tokens,
            "max_tokens": max_tokens,
            "reservation_id": reservation_id,
            "ttl_s": ttl_s,
            "cache_ttl": cache_ttl,
            "batch": batch,
            "inference_geo": inference_geo,
            "speed": speed,
            "web_searches": web_searches,
        }
        grant = self.client.run(self._reserve(self.client, override, fields))
        return Reservation(self.client, grant, self.org, model)

    @contextlib.contextmanager
    def reservation(
        self,
        *,
        model: str,
        input_tokens: int,
        max_tokens: int,
        user: str | None = None,
        feature: str | None = None,
        metadata: dict[str, str] | None = None,
        session: str | None = None,
        **options: Any,
    ) -> Iterator[Reservation]:
        """Reserve; release on an exception or when left without a commit."""
        r = self.reserve(
            model=model,
            input_tokens=input_tokens,
            max_tokens=max_tokens,
            override=Scope(user=user, feature=feature, session=session, metadata=metadata),
            **options,
        )
        try:
            yield r
        except BaseException:
            r.settle(None)
            raise
        if not r.resolved:
            log.warning("reservation %s left without commit(): released", r.id)
            r.settle(None)

    def metered(
        self, *, model: str, max_tokens: int, input_tokens: int, **options: Any
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorator: reserve around a function that returns a Message-like object (with
        ``usage`` and ``model``), and commit that usage."""

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            @functools.wraps(fn)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                with self.reservation(
                    model=model, input_tokens=input_tokens, max_tokens=max_tokens, **options
                ) as r:
                    result = fn(*args, **kwargs)
                    usage, used_model = usage_of(result)
                    if usage is None:
                        raise TypeError(f"{fn.__name__} returned no usage to commit")
                    r.commit(usage, model=used_model)
                    return result

            return wrapper

        return decorate


class AsyncBudget(_BudgetBase):
    """The asyncio twin of :class:`Budget`."""

    def __init__(
        self,
        client: AsyncBudgetdClient,
        *,
        org: str,
        user: str | None = None,
        feature: str | None = None,
        metadata: dict[str, str] | None = None,
        session: str | None = None,
    ) -> None:
        super().__init__(org=org, user=user, feature=feature, metadata=metadata, session=session)
        self.client = client

    async def reserve(
        self,
        *,
        model: str,
        input_tokens: int,
        max_tokens: int,
        override: Scope | None = None,
        reservation_id: str | None = None,
        ttl_s: int | None = None,
        cache_ttl: CacheTTL | None = None,
        batch: bool = False,
        inference_geo: str | None = None,
        speed: Speed | None = None,
        web_searches: int = 0,
    ) -> AsyncReservation:
        fields = {
            "model": model,
            "input_tokens": input_tokens,
            "max_tokens": max_tokens,
            "reservation_id": reservation_id,
            "ttl_s": ttl_s,
            "cache_ttl": cache_ttl,
            "batch": batch,
            "inference_geo": inference_geo,
            "speed": speed,
            "web_searches": web_searches,
        }
        grant = await self.client.run(self._reserve(self.client, override, fields))
        return AsyncReservation(self.client, grant, self.org, model)

    @contextlib.asynccontextmanager
    async def reservation(
        self,
        *,
        model: str,
        input_tokens: int,
        max_tokens: int,
        user: str | None = None,
        feature: str | None = None,
        metadata: dict[str, str] | None = None,
        session: str | None = None,
        **options: Any,
    ) -> AsyncIterator[AsyncReservation]:
        r = await self.reserve(
            model=model,
            input_tokens=input_tokens,
            max_tokens=max_tokens,
            override=Scope(user=user, feature=feature, session=session, metadata=metadata),
            **options,
        )
        try:
            yield r
        except BaseException:
            await r.settle(None)
            raise
        if not r.resolved:
            log.warning("reservation %s left without commit(): released", r.id)
            await r.settle(None)

    def metered(
        self, *, model: str, max_tokens: int, input_tokens: int, **options: Any
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
        """Decorator for ``async def`` functions; see :meth:`Budget.metered`."""

        def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            @functools.wraps(fn)
            async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                async with self.reservation(
                    model=model, input_tokens=input_tokens, max_tokens=max_tokens, **options
                ) as r:
                    result = await fn(*args, **kwargs)
                    usage, used_model = usage_of(result)
                    if usage is None:
                        raise TypeError(f"{fn.__name__} returned no usage to commit")
                    await r.commit(usage, model=used_model)
                    return result

            return wrapper

        return decorate
