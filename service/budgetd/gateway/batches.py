"""Message Batches through the gateway.

Submit: every request of the batch is reserved at the batch price (the core's reserves), all or
none: one denial releases the others and refuses the batch, as Anthropic refuses a batch it
cannot take. The holds last the policy's ``hold_ttl_s``, the longest lease it allows: an org
that batches through the gateway sets it to a day, a batch's own deadline.

Results (``GET /v1/messages/batches/{id}/results``, streamed through): each line is settled as
the core reads it. A succeeded request's usage is *recorded* under the id
``<batch id>:<custom_id>``, so reading the results twice, through another replica or after a
restart charges it once; then its hold (when this process made it) is released. Errored,
canceled and expired requests only release. Holds made by another process run out with their
lease. Batch objects name their ``results_url`` on Anthropic's host, which the SDKs follow
as is; the gateway rewrites it to itself, or the results would bypass it."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
import msgspec
from budgetd_client.core import BatchOutcome, BatchResultsReader, Call, Commit, Reserve, batch_id_of

from budgetd.contract import UsageRequest
from budgetd.errors import BudgetdError
from budgetd.gateway import errors
from budgetd.gateway.exchange import Exchange, unreachable
from budgetd.gateway.wire import Send, from_upstream, reply, to_upstream
from budgetd.usage import Usage

log = logging.getLogger("budgetd.gateway")

REMEMBERED_BATCHES = 10_000
IN_FLIGHT = 64
"""Reserves (and settlements) of one batch sent to the store at once."""


@dataclass(frozen=True, slots=True)
class Held:
    reservation_id: str
    reserve: Reserve


class Batches:
    """What this process reserved for each batch it submitted, until its results are read."""

    def __init__(self) -> None:
        self._held: OrderedDict[str, dict[str, Held]] = OrderedDict()

    async def submit(
        self,
        x: Exchange,
        call: Call,
        method: str,
        target: str,
        body: bytes,
        send: Send,
        public: str,
    ) -> None:
        granted: list[Held] = []
        refusal: errors.Reply | None = None
        for start in range(0, len(call.reserves), IN_FLIGHT):
            window = call.reserves[start : start + IN_FLIGHT]
            held = await asyncio.gather(*(x.reserve(r) for r in window))
            for reserve, rid in zip(window, held, strict=True):
                if isinstance(rid, errors.Reply):
                    refusal = refusal or rid
                else:
                    granted.append(Held(rid, reserve))
            if refusal is not None:
                break
        if refusal is not None:
            await self._release(x, granted)
            return await reply(send, refusal)
        try:
            async with x.upstream.request(
                method, target, to_upstream(call.headers, x.api_key), body
            ) as response:
                answer = await response.read()
                status, returned = response.status, response.raw_headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self._release(x, granted)
            return await reply(send, unreachable(exc))
        batch_id = batch_id_of(status, answer)
        if batch_id is None:
            await self._release(x, granted)
        else:
            self._held[batch_id] = {h.reserve.custom_id or "": h for h in granted}
            while len(self._held) > REMEMBERED_BATCHES:
                self._held.popitem(last=False)
        await _send_rewritten(send, status, returned, answer, x.upstream.base_url, public)

    async def results(self, x: Exchange, call: Call, method: str, target: str, send: Send) -> None:
        batch_id = call.batch_id or ""
        held = self._held.get(batch_id, {})
        started = False
        try:
            async with x.upstream.request(
                method, target, to_upstream(call.headers, x.api_key), None
            ) as response:
                reader = BatchResultsReader(response.status, response.raw_headers)
                returned = from_upstream(response.raw_headers)
                await send(
                    {"type": "http.response.start", "status": response.status, "headers": returned}
                )
                started = True
                async for chunk in response.content.iter_any():
                    await self._settle(x, batch_id, held, reader.feed(chunk))
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await self._settle(x, batch_id, held, reader.finish())
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (aiohttp.ClientError, TimeoutError) as exc:
            if not started:
                await reply(send, unreachable(exc))
            return  # left unfinished: the caller's connection is cut like ours was
        if response.status == 200:
            # Every line was read: a hold whose request had no line (none, normally) goes too.
            self._held.pop(batch_id, None)
            await self._release(x, list(held.values()))

    async def rewrite(
        self,
        x: Exchange,
        call: Call,
        method: str,
        target: str,
        body: bytes,
        send: Send,
        public: str,
    ) -> None:
        """A batch object or list (create answers go through ``submit``): passed back with its
        ``results_url`` pointing at the gateway."""
        try:
            async with x.upstream.request(
                method, target, to_upstream(call.headers, x.api_key), body or None
            ) as response:
                answer = await response.read()
                status, returned = response.status, response.raw_headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            return await reply(send, unreachable(exc))
        await _send_rewritten(send, status, returned, answer, x.upstream.base_url, public)

    async def _settle(
        self, x: Exchange, batch_id: str, held: dict[str, Held], outcomes: list[BatchOutcome]
    ) -> None:
        for start in range(0, len(outcomes), IN_FLIGHT):
            await asyncio.gather(
                *(
                    self._one(x, batch_id, held.pop(o.custom_id, None), o)
                    for o in outcomes[start : start + IN_FLIGHT]
                )
            )

    @staticmethod
    async def _one(x: Exchange, batch_id: str, held: Held | None, outcome: BatchOutcome) -> None:
        settlement = outcome.settlement
        try:
            if isinstance(settlement, Commit):
                who = held.reserve if held is not None else None
                await x.engine.record(
                    UsageRequest(
                        org=x.org,
                        model=settlement.model or (who.model if who else "unknown"),
                        usage=msgspec.convert(settlement.usage, Usage, strict=False),
                        user=who.user if who else x.user,
                        feature=who.feature if who else x.feature,
                        session=who.session if who else None,
                        record_id=f"{batch_id}:{outcome.custom_id}",
                        batch=True,
                        tags=list(who.tags) if who else [],
                    ),
                    key=x.key,
                )
            if held is not None:
                await x.engine.release(x.org, held.reservation_id)
        except (BudgetdError, msgspec.ValidationError) as exc:
            log.error(
                "could not settle %s of batch %s (org %s): %s",
                outcome.custom_id,
                batch_id,
                x.org,
                exc,
            )

    @staticmethod
    async def _release(x: Exchange, granted: list[Held]) -> None:
        for start in range(0, len(granted), IN_FLIGHT):
            await asyncio.gather(
                *(x.settle_release(h.reservation_id) for h in granted[start : start + IN_FLIGHT])
            )


async def _send_rewritten(
    send: Send,
    status: int,
    headers: Iterable[tuple[bytes, bytes]],
    body: bytes,
    upstream: str,
    public: str,
) -> None:
    rewritten = body.replace((upstream + "/v1/").encode(), (public + "/v1/").encode())
    returned = [(k, v) for k, v in from_upstream(headers) if k.lower() != b"content-length"]
    returned.append((b"content-length", b"%d" % len(rewritten)))
    await send({"type": "http.response.start", "status": status, "headers": returned})
    await send({"type": "http.response.body", "body": rewritten, "more_body": False})
