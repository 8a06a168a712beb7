"""Sync and async clients for every budgetd endpoint.

Retries: every call is retried on a connection error, a timeout or a 5xx, up to ``retries``
more times with exponential backoff. That is safe for reserve and commit because the
reservation id is chosen here before the first attempt: a retry of a request that did reach
budgetd (only its answer was lost) is answered as a replay, never as a second hold or charge.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx

from budgetd_client._core import (
    Base,
    FailMode,
    Pending,
    Unreachable,
    body_of,
    log,
    new_id,
    usage_dict,
)
from budgetd_client.errors import NotFound, ServiceUnavailable
from budgetd_client.types import (
    AdjustmentResult,
    BudgetsResult,
    CommitResult,
    CostResult,
    Grant,
    RecordResult,
    ReleaseResult,
)

T = TypeVar("T")
DEFAULT_TIMEOUT = httpx.Timeout(5.0, connect=1.0)
Speed = Literal["standard", "fast"]
CacheTTL = Literal["5m", "1h"]


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
        backoff_s: first retry delay; doubled on each further retry.
        timeout: per-attempt httpx timeout.
        http_client: your own ``httpx.Client`` (its base URL is ignored); ``transport`` to only
            swap the transport.
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
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        http_client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            org=org,
            fail_mode=fail_mode,
            retries=retries,
            backoff_s=backoff_s,
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout, transport=transport)

    # -- plumbing --------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> BudgetdClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(
        self,
        method: str,
        path: str,
        into: type[T],
        *,
        body: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> T:
        cause: BaseException | str = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.bump("retries")
                time.sleep(self._delay(attempt))
            self.stats.bump("requests")
            try:
                response = self._http.request(
                    method,
                    self.base_url + path,
                    content=body,
                    params=params,
                    headers=self._headers,
                )
            except httpx.TransportError as exc:
                cause = exc
                log.info("budgetd %s %s attempt %d failed: %r", method, path, attempt + 1, exc)
                continue
            if response.status_code >= 500:
                # budgetd's own 503 (store down, fail-closed limit) is an answer, raised as is
                # once retries run out; any other 5xx means budgetd is not working.
                cause = (
                    self._error(response)
                    if self._is_answer(response)
                    else Unreachable(f"HTTP {response.status_code}")
                )
                continue
            return self._decode(response, into)
        if isinstance(cause, ServiceUnavailable) and not cause.unreachable:
            raise cause
        raise self._unreachable(f"{method} {path}", cause)

    # -- endpoints -------------------------------------------------------------------------

    def reserve(
        self,
        *,
        model: str,
        input_tokens: int,
        max_tokens: int,
        org: str | None = None,
        user: str | None = None,
        feature: str | None = None,
        reservation_id: str | None = None,
        ttl_s: int | None = None,
        cache_ttl: CacheTTL | None = None,
        batch: bool = False,
        inference_geo: str | None = None,
        speed: Speed | None = None,
        web_searches: int = 0,
        metadata: dict[str, str] | None = None,
    ) -> Grant:
        """Hold the worst-case cost of a call on every applicable limit.

        Raises:
            BudgetExceeded: a limit denied it (``.scopes``, ``.retry_after``); nothing is held.
            ServiceUnavailable: budgetd unreachable and ``fail_mode="closed"``, or budgetd's
                store is down and a fail-closed limit applies.
        """
        org = self._org(org)
        rid = reservation_id or new_id()
        body = body_of(
            org=org,
            model=model,
            input_tokens=input_tokens,
            max_tokens=max_tokens,
            user=user,
            feature=feature,
            reservation_id=rid,
            ttl_s=ttl_s,
            cache_ttl=cache_ttl,
            batch=batch or None,
            inference_geo=inference_geo,
            speed=speed,
            web_searches=web_searches or None,
            metadata=metadata,
        )
        try:
            return self._call("POST", "/v1/reservations", Grant, body=body)
        except ServiceUnavailable as exc:
            if not exc.unreachable:
                raise
            if self.fail_mode == "closed":
                raise self._refuse(rid, org, exc) from None
            pending = Pending(
                org=org, model=model, user=user, feature=feature, metadata=metadata, batch=batch
            )
            return self._grant_locally(rid, pending, exc)

    def commit(
        self,
        reservation_id: str,
        usage: Any,
        *,
        model: str | None = None,
        batch: bool = False,
        org: str | None = None,
    ) -> CommitResult:
        """Settle the actual cost from the response's ``usage`` (sent verbatim).

        ``model`` is the response's model (the reserved one when None). A fail-open reservation
        is recorded through ``/v1/usage`` instead; if budgetd is still unreachable the result's
        ``state`` is ``"unrecorded"`` (logged and counted, never raised).
        """
        org = self._org(org)
        used = usage_dict(usage)
        body = body_of(usage=used, model=model, batch=batch or None)
        path = f"/v1/reservations/{reservation_id}/commit"
        pending = self._pending_of(reservation_id)
        if pending is None:
            return self._call("POST", path, CommitResult, body=body, params={"org": org})
        try:
            try:
                # An attempt of the reserve may have reached budgetd before it went away.
                result = self._call("POST", path, CommitResult, body=body, params={"org": org})
            except NotFound:
                record = self.record_usage(
                    org=pending.org,
                    model=model or pending.model,
                    usage=used,
                    user=pending.user,
                    feature=pending.feature,
                    record_id=reservation_id,
                    batch=batch or pending.batch,
                    metadata=pending.metadata,
                )
                result = self._as_commit(reservation_id, record)
        except ServiceUnavailable as exc:
            self._forget(reservation_id)
            return self._unrecorded(reservation_id, org, used, exc)
        self._forget(reservation_id)
        self.stats.bump("degraded_commits")
        return result

    def release(self, reservation_id: str, *, org: str | None = None) -> ReleaseResult:
        """Void the hold (the call failed). Releasing twice answers the state it is in."""
        org = self._org(org)
        path = f"/v1/reservations/{reservation_id}/release"
        if self._pending_of(reservation_id) is None:
            return self._call("POST", path, ReleaseResult, params={"org": org})
        self._forget(reservation_id)
        try:
            return self._call("POST", path, ReleaseResult, params={"org": org})
        except (NotFound, ServiceUnavailable):
            return self._released_locally(reservation_id)

    def record_usage(
        self,
        *,
        model: str,
        usage: Any,
        org: str | None = None,
        user: str | None = None,
        feature: str | None = None,
        record_id: str | None = None,
        batch: bool = False,
        metadata: dict[str, str] | None = None,
        cost_micros: int | None = None,
    ) -> RecordResult:
        """Record a call made without a reservation (batch results, agent runs). The same
        ``record_id`` records once; one is generated when None, so retries are safe.
        ``cost_micros`` charges a reported cost instead of budgetd's price of ``usage``."""
        body = body_of(
            org=self._org(org),
            model=model,
            usage=usage_dict(usage),
            user=user,
            feature=feature,
            record_id=record_id or new_id(),
            batch=batch or None,
            metadata=metadata,
            cost_micros=cost_micros,
        )
        return self._call("POST", "/v1/usage", RecordResult, body=body)

    def adjust(
        self,
        *,
        budget: str,
        amount_micros: int,
        reason: str,
        entity: str | None = None,
        org: str | None = None,
        adjustment_id: str | None = None,
    ) -> AdjustmentResult:
        """Admin keys: move one budget's spend in its current period by ``amount_micros``
        (negative for a refund or credit), with a ledger entry saying why. The same
        ``adjustment_id`` adjusts once; one is generated when None, so retries are safe."""
        body = body_of(
            org=self._org(org),
            budget=budget,
            entity=entity,
            amount_micros=amount_micros,
            reason=reason,
            adjustment_id=adjustment_id or new_id(),
        )
        return self._call("POST", "/v1/admin/adjustments", AdjustmentResult, body=body)

    def cost(
        self, *, model: str, usage: Any, batch: bool = False, org: str | None = None
    ) -> CostResult:
        """What ``usage`` costs, recorded nowhere."""
        body = body_of(model=model, usage=usage_dict(usage), batch=batch or None, org=org)
        return self._call("POST", "/v1/cost", CostResult, body=body)

    def budgets(
        self,
        *,
        org: str | None = None,
        user: str | None = None,
        feature: str | None = None,
        model: str | None = None,
    ) -> BudgetsResult:
        """Each limit that applies to the scope: limit, spent, held, remaining, period."""
        params = {"org": self._org(org)}
        params.update(
            {k: v for k, v in (("user", user), ("feature", feature), ("model", model)) if v}
        )
        return self._call("GET", "/v1/budgets", BudgetsResult, params=params)

    def healthy(self) -> bool:
        """``/readyz`` answered 2xx (store reachable, policy loaded)."""
        try:
            return self._http.get(self.base_url + "/readyz", headers=self._headers).is_success
        except httpx.TransportError:
            return False


class AsyncBudgetdClient(Base):
    """The asyncio twin of :class:`BudgetdClient`: same arguments, same behaviour."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        *,
        api_key: str | None = None,
        org: str | None = None,
        fail_mode: FailMode = "closed",
        retries: int = 2,
        backoff_s: float = 0.05,
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
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncBudgetdClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        into: type[T],
        *,
        body: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> T:
        cause: BaseException | str = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.bump("retries")
                await asyncio.sleep(self._delay(attempt))
            self.stats.bump("requests")
            try:
                response = await self._http.request(
                    method,
                    self.base_url + path,
                    content=body,
                    params=params,
                    headers=self._headers,
                )
            except httpx.TransportError as exc:
                cause = exc
                log.info("budgetd %s %s attempt %d failed: %r", method, path, attempt + 1, exc)
                continue
            if response.status_code >= 500:
                # budgetd's own 503 (store down, fail-closed limit) is an answer, raised as is
                # once retries run out; any other 5xx means budgetd is not working.
                cause = (
                    self._error(response)
                    if self._is_answer(response)
                    else Unreachable(f"HTTP {response.status_code}")
                )
                continue
            return self._decode(response, into)
        if isinstance(cause, ServiceUnavailable) and not cause.unreachable:
            raise cause
        raise self._unreachable(f"{method} {path}", cause)

    async def reserve(
        self,
        *,
        model: str,
        input_tokens: int,
        max_tokens: int,
        org: str | None = None,
        user: str | None = None,
        feature: str | None = None,
        reservation_id: str | None = None,
        ttl_s: int | None = None,
        cache_ttl: CacheTTL | None = None,
        batch: bool = False,
        inference_geo: str | None = None,
        speed: Speed | None = None,
        web_searches: int = 0,
        metadata: dict[str, str] | None = None,
    ) -> Grant:
        """See :meth:`BudgetdClient.reserve`."""
        org = self._org(org)
        rid = reservation_id or new_id()
        body = body_of(
            org=org,
            model=model,
            input_tokens=input_tokens,
            max_tokens=max_tokens,
            user=user,
            feature=feature,
            reservation_id=rid,
            ttl_s=ttl_s,
            cache_ttl=cache_ttl,
            batch=batch or None,
            inference_geo=inference_geo,
            speed=speed,
            web_searches=web_searches or None,
            metadata=metadata,
        )
        try:
            return await self._call("POST", "/v1/reservations", Grant, body=body)
        except ServiceUnavailable as exc:
            if not exc.unreachable:
                raise
            if self.fail_mode == "closed":
                raise self._refuse(rid, org, exc) from None
            pending = Pending(
                org=org, model=model, user=user, feature=feature, metadata=metadata, batch=batch
            )
            return self._grant_locally(rid, pending, exc)

    async def commit(
        self,
        reservation_id: str,
        usage: Any,
        *,
        model: str | None = None,
        batch: bool = False,
        org: str | None = None,
    ) -> CommitResult:
        """See :meth:`BudgetdClient.commit`."""
        org = self._org(org)
        used = usage_dict(usage)
        body = body_of(usage=used, model=model, batch=batch or None)
        path = f"/v1/reservations/{reservation_id}/commit"
        pending = self._pending_of(reservation_id)
        if pending is None:
            return await self._call("POST", path, CommitResult, body=body, params={"org": org})
        try:
            try:
                result = await self._call(
                    "POST", path, CommitResult, body=body, params={"org": org}
                )
            except NotFound:
                record = await self.record_usage(
                    org=pending.org,
                    model=model or pending.model,
                    usage=used,
                    user=pending.user,
                    feature=pending.feature,
                    record_id=reservation_id,
                    batch=batch or pending.batch,
                    metadata=pending.metadata,
                )
                result = self._as_commit(reservation_id, record)
        except ServiceUnavailable as exc:
            self._forget(reservation_id)
            return self._unrecorded(reservation_id, org, used, exc)
        self._forget(reservation_id)
        self.stats.bump("degraded_commits")
        return result

    async def release(self, reservation_id: str, *, org: str | None = None) -> ReleaseResult:
        """See :meth:`BudgetdClient.release`."""
        org = self._org(org)
        path = f"/v1/reservations/{reservation_id}/release"
        if self._pending_of(reservation_id) is None:
            return await self._call("POST", path, ReleaseResult, params={"org": org})
        self._forget(reservation_id)
        try:
            return await self._call("POST", path, ReleaseResult, params={"org": org})
        except (NotFound, ServiceUnavailable):
            return self._released_locally(reservation_id)

    async def record_usage(
        self,
        *,
        model: str,
        usage: Any,
        org: str | None = None,
        user: str | None = None,
        feature: str | None = None,
        record_id: str | None = None,
        batch: bool = False,
        metadata: dict[str, str] | None = None,
        cost_micros: int | None = None,
    ) -> RecordResult:
        """See :meth:`BudgetdClient.record_usage`."""
        body = body_of(
            org=self._org(org),
            model=model,
            usage=usage_dict(usage),
            user=user,
            feature=feature,
            record_id=record_id or new_id(),
            batch=batch or None,
            metadata=metadata,
            cost_micros=cost_micros,
        )
        return await self._call("POST", "/v1/usage", RecordResult, body=body)

    async def adjust(
        self,
        *,
        budget: str,
        amount_micros: int,
        reason: str,
        entity: str | None = None,
        org: str | None = None,
        adjustment_id: str | None = None,
    ) -> AdjustmentResult:
        """See :meth:`BudgetdClient.adjust`."""
        body = body_of(
            org=self._org(org),
            budget=budget,
            entity=entity,
            amount_micros=amount_micros,
            reason=reason,
            adjustment_id=adjustment_id or new_id(),
        )
        return await self._call("POST", "/v1/admin/adjustments", AdjustmentResult, body=body)

    async def cost(
        self, *, model: str, usage: Any, batch: bool = False, org: str | None = None
    ) -> CostResult:
        """See :meth:`BudgetdClient.cost`."""
        body = body_of(model=model, usage=usage_dict(usage), batch=batch or None, org=org)
        return await self._call("POST", "/v1/cost", CostResult, body=body)

    async def budgets(
        self,
        *,
        org: str | None = None,
        user: str | None = None,
        feature: str | None = None,
        model: str | None = None,
    ) -> BudgetsResult:
        """See :meth:`BudgetdClient.budgets`."""
        params = {"org": self._org(org)}
        params.update(
            {k: v for k, v in (("user", user), ("feature", feature), ("model", model)) if v}
        )
        return await self._call("GET", "/v1/budgets", BudgetsResult, params=params)

    async def healthy(self) -> bool:
        """See :meth:`BudgetdClient.healthy`."""
        try:
            response = await self._http.get(self.base_url + "/readyz", headers=self._headers)
        except httpx.TransportError:
            return False
        return response.is_success
