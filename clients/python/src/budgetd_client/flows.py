"""What the guard does with one request, written once for the sync and async transports.

Each flow is a generator that yields the I/O it needs (:class:`Budgetd`: call a budgetd client
method; :class:`Send`: send a request upstream; :class:`Read`: read a response body;
:class:`Tap`: hand back a response whose body feeds a :class:`Tapper` as it passes) and gets
the result (or the exception, thrown in) back. The transports in :mod:`budgetd_client.transport`
only run those steps, one with plain calls and one with ``await``: the sync/async twins hold no
logic. The decisions themselves (what to reserve, how to settle) are :mod:`budgetd_client.core`'s.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx2
import msgspec

from budgetd_client._core import ClientStats, new_id
from budgetd_client.core import (
    Attribution,
    BatchOutcome,
    BatchResultsReader,
    Call,
    Commit,
    MessageSettler,
    Release,
    RequestRefused,
    Reserve,
    Route,
    Settlement,
    batch_id_of,
    plan_call,
)
from budgetd_client.denial import as_anthropic_error, refused_response
from budgetd_client.errors import BudgetdError
from budgetd_client.reservation import current_scope

log = logging.getLogger("budgetd_client")
T = TypeVar("T")

BATCHES_KEPT = 1_000
"""Batches whose reservations the guard remembers (oldest forgotten first)."""


@dataclass(frozen=True, slots=True)
class Budgetd:
    """Call ``method(**kwargs)`` on the budgetd client."""

    method: str
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``request`` upstream (the wrapped transport); answers the response."""

    request: httpx2.Request


@dataclass(frozen=True, slots=True)
class Read:
    """Read ``response``'s whole body; answers the bytes."""

    response: httpx2.Response


@dataclass(frozen=True, slots=True)
class Tap:
    """Answer ``response`` with its body passing through ``tapper`` as the app reads it."""

    response: httpx2.Response
    tapper: Tapper


Step = Budgetd | Send | Read | Tap
Flow = Generator[Step, Any, T]


class Tapper:
    """Sees a response body chunk by chunk; its flows settle what the body says."""

    def feed(self, chunk: bytes) -> Flow[None] | None:
        raise NotImplementedError

    def finish(self, complete: bool) -> Flow[None]:
        raise NotImplementedError


@dataclass
class _Held:
    """A batch request's reservation, kept until its result is read."""

    reservation_id: str
    reserve: Reserve


@dataclass
class BatchBook:
    """Reservations of the batches submitted through this guard, by batch id and custom id.
    Shared by every copy of the client (``with_options``) since they share the transport."""

    _batches: OrderedDict[str, dict[str, _Held]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, batch_id: str, held: dict[str, _Held]) -> None:
        with self._lock:
            self._batches[batch_id] = held
            while len(self._batches) > BATCHES_KEPT:
                self._batches.popitem(last=False)

    def get(self, batch_id: str, custom_id: str) -> _Held | None:
        with self._lock:
            return self._batches.get(batch_id, {}).get(custom_id)


class Guard:
    """The guard's settings and flows (no I/O of its own)."""

    def __init__(
        self,
        *,
        org: str,
        defaults: Attribution,
        stats: ClientStats,
        count_tokens: bool = False,
        margin: float = 0.0,
    ) -> None:
        self.org = org
        self.defaults = defaults
        self.stats = stats
        self.count_tokens = count_tokens
        self.margin = margin
        self.batches = BatchBook()

    def attribution(self) -> Attribution:
        """Guard defaults < the enclosing ``scope()`` blocks (headers and metadata come next,
        in the core)."""
        return current_scope().over(self.defaults)

    def handle(self, request: httpx2.Request) -> Flow[httpx2.Response]:
        """The whole exchange of one request."""
        body = request.content
        try:
            call = plan_call(
                request.method, str(request.url), request.headers.raw, body, self.attribution()
            )
        except RequestRefused as refused:
            return refused_response(request, str(refused), refused.field)
        upstream = (
            request
            if call.headers == request.headers.raw
            else httpx2.Request(
                request.method,
                request.url,
                headers=call.headers,
                content=body,
                extensions=request.extensions,
            )
        )
        if call.route is Route.OTHER or call.route is Route.BATCH_CANCEL:
            # A cancel settles nothing yet: the results say which requests were canceled.
            passed: httpx2.Response = yield Send(upstream)
            return passed
        if call.route is Route.MESSAGE:
            return (yield from self._message(request, call, upstream))
        if call.route is Route.BATCH_SUBMIT:
            return (yield from self._batch_submit(request, call, upstream))
        response = yield Send(upstream)
        assert call.batch_id is not None
        tapped: httpx2.Response = yield Tap(response, _ResultsTapper(self, call.batch_id, response))
        return tapped

    # -- messages ----------------------------------------------------------------------------

    def _message(
        self, request: httpx2.Request, call: Call, upstream: httpx2.Request
    ) -> Flow[httpx2.Response]:
        (reserve,) = call.reserves
        if self.count_tokens and call.count_body is not None:
            reserve = yield from self._counted(reserve, upstream, call.count_body)
        rid = yield from self._reserve(request, reserve)
        try:
            response = yield Send(upstream)
        except BaseException:
            yield from self.settle(rid, Release(reason="the request failed"))
            raise
        settler = MessageSettler(reserve, response.status_code, response.headers.raw)
        tapped: httpx2.Response = yield Tap(response, _MessageTapper(self, rid, settler))
        return tapped

    def _counted(self, reserve: Reserve, upstream: httpx2.Request, body: bytes) -> Flow[Reserve]:
        url = upstream.url.copy_with(path=upstream.url.path.rstrip("/") + "/count_tokens")
        headers = [(k, v) for k, v in upstream.headers.raw if k.lower() != b"content-length"]
        count = httpx2.Request(
            "POST", url, headers=headers, content=body, extensions=upstream.extensions
        )
        try:
            response = yield Send(count)
            data = yield Read(response)
            answer = msgspec.json.decode(data) if response.status_code == 200 else None
            tokens = answer.get("input_tokens") if isinstance(answer, dict) else None
            if isinstance(tokens, int):
                return reserve.counted(tokens)
            log.warning("count_tokens answered %s: holding the bound", response.status_code)
        except Exception as exc:  # the bound is safe to hold without it
            log.warning("count_tokens failed, holding the bound: %r", exc)
        return reserve

    def _reserve(self, request: httpx2.Request, reserve: Reserve) -> Flow[str]:
        rid = new_id()
        fields = reserve.fields()
        if self.margin:
            fields["input_tokens"] = int(fields["input_tokens"] * (1 + self.margin)) + 1
        try:
            yield Budgetd("reserve", {**fields, "org": self.org, "reservation_id": rid})
        except BudgetdError as exc:
            raise as_anthropic_error(exc, request) from exc
        return rid

    def settle(self, rid: str, settlement: Settlement) -> Flow[None]:
        """Commit or release; never raises (the response is already paid for): a failure is
        logged and counted, and the hold expires on its lease."""
        try:
            if isinstance(settlement, Commit):
                if settlement.unknown:
                    log.warning("reservation %s: usage unreadable, committing its worst case", rid)
                yield Budgetd(
                    "commit",
                    {
                        "reservation_id": rid,
                        "usage": settlement.usage,
                        "model": settlement.model,
                        "batch": settlement.batch,
                        "org": self.org,
                    },
                )
            else:
                yield Budgetd("release", {"reservation_id": rid, "org": self.org})
        except BudgetdError as exc:
            self.stats.bump("settle_errors")
            log.error(
                "budgetd settle of reservation %s failed (the hold expires on its lease): %s; %r",
                rid,
                exc,
                settlement,
            )

    # -- batches -----------------------------------------------------------------------------

    def _batch_submit(
        self, request: httpx2.Request, call: Call, upstream: httpx2.Request
    ) -> Flow[httpx2.Response]:
        held: dict[str, _Held] = {}
        try:
            for reserve in call.reserves:
                # Held for the policy's hold_ttl_s: budgetd refuses a longer ttl_s.
                rid = yield from self._reserve(request, reserve)
                held[str(reserve.custom_id)] = _Held(rid, reserve)
            response = yield Send(upstream)
            content = yield Read(response)
        except BaseException:
            for h in held.values():
                yield from self.settle(h.reservation_id, Release(reason="batch not submitted"))
            raise
        batch_id = batch_id_of(response.status_code, content, response.headers.raw)
        if batch_id is None:
            for h in held.values():
                yield from self.settle(h.reservation_id, Release(reason="batch refused"))
        else:
            self.batches.add(batch_id, held)
        return httpx2.Response(
            response.status_code,
            headers=response.headers.raw,
            content=content,
            extensions=response.extensions,
        )

    def settle_result(self, batch_id: str, outcome: BatchOutcome) -> Flow[None]:
        """Settle one batch result. The usage is recorded under ``batch.<batch>.<custom id>``
        (so whichever process reads the results, and however often, charges it once), then
        the request's hold, if this guard made it, is released."""
        held = self.batches.get(batch_id, outcome.custom_id)
        settlement = outcome.settlement
        if isinstance(settlement, Commit):
            reserve = held.reserve if held else None
            who = (
                Attribution(
                    user=reserve.user,
                    feature=reserve.feature,
                    session=reserve.session,
                    metadata=reserve.metadata,
                    tags=reserve.tags,
                )
                if reserve
                else self.defaults
            )
            model = settlement.model or (reserve.model if reserve else None)
            try:
                yield Budgetd(
                    "record_usage",
                    {
                        "org": self.org,
                        "model": model,
                        "usage": settlement.usage,
                        "user": who.user,
                        "feature": who.feature,
                        "session": who.session,
                        "metadata": who.reserve_metadata(),
                        "tags": list(who.tags),
                        "record_id": f"batch.{batch_id}.{outcome.custom_id}",
                        "batch": True,
                    },
                )
            except BudgetdError as exc:
                self.stats.bump("settle_errors")
                log.error("budgetd record of batch result %s failed: %s", outcome.custom_id, exc)
                return  # keep the hold: it stands for the spend until its lease ends
        if held is not None:
            yield from self.settle(held.reservation_id, Release(reason="batch result recorded"))


class _MessageTapper(Tapper):
    def __init__(self, guard: Guard, rid: str, settler: MessageSettler) -> None:
        self.guard = guard
        self.rid = rid
        self.settler = settler

    def feed(self, chunk: bytes) -> None:
        self.settler.feed(chunk)

    def finish(self, complete: bool) -> Flow[None]:
        return self.guard.settle(self.rid, self.settler.settle(complete=complete))


class _ResultsTapper(Tapper):
    def __init__(self, guard: Guard, batch_id: str, response: httpx2.Response) -> None:
        self.guard = guard
        self.batch_id = batch_id
        self.reader = BatchResultsReader(response.status_code, response.headers.raw)

    def feed(self, chunk: bytes) -> Flow[None] | None:
        outcomes = self.reader.feed(chunk)
        return self._settle(outcomes) if outcomes else None

    def finish(self, complete: bool) -> Flow[None]:
        return self._settle(self.reader.finish() if complete else [])

    def _settle(self, outcomes: list[BatchOutcome]) -> Flow[None]:
        for outcome in outcomes:
            yield from self.guard.settle_result(self.batch_id, outcome)
