"""One call through the gateway: reserve, forward, pass the answer back as it arrives, settle.

The bytes of the answer go to the caller the moment they arrive from Anthropic (never the whole
body held); the core's settler reads the same chunks on the way past. Every path out of a
reserved call settles it exactly once: commit what the answer (or the last stream event)
reported, or release when Anthropic billed nothing (an error status, no ``message_start``, a
connection that failed or timed out before an answer)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import msgspec
from budgetd_client.core import (
    Call,
    Commit,
    MessageSettler,
    Release,
    Reserve,
    Settlement,
    worst_case_usage,
)

from budgetd.auth import Principal
from budgetd.contract import CommitRequest, Denied, ReserveRequest
from budgetd.engine import Engine
from budgetd.errors import BudgetdError, UnknownModel
from budgetd.gateway import errors
from budgetd.gateway.upstream import Upstream
from budgetd.gateway.wire import Receive, Send, from_upstream, reply, to_upstream
from budgetd.usage import Usage

log = logging.getLogger("budgetd.gateway")

RESERVATION_HEADER = b"x-budgetd-reservation-id"


class Exchange:
    def __init__(
        self, engine: Engine, upstream: Upstream, principal: Principal, api_key: str
    ) -> None:
        assert principal.org is not None  # the gateway refuses to start without keys
        self.engine = engine
        self.upstream = upstream
        self.org = principal.org
        self.user = principal.user
        self.feature = principal.feature
        self.key = principal.key
        self.api_key = api_key

    async def reserve(self, reserve: Reserve) -> str | errors.Reply:
        """The reservation id, or the answer that refuses the call."""
        fields = {"org": self.org, **reserve.fields()}
        try:
            request = msgspec.convert(fields, ReserveRequest)
        except msgspec.ValidationError as exc:
            return errors.error(400, f"budgetd: {exc}")
        try:
            # Only the id is used: the per-scope detail is not built (reserve answer v2).
            result = await self.engine.reserve(request, key=self.key, with_scopes=False)
        except BudgetdError as exc:
            return errors.from_budgetd(exc)
        if isinstance(result, Denied):
            return errors.denial(result)
        return result.reservation_id

    async def message(
        self, call: Call, method: str, target: str, body: bytes, receive: Receive, send: Send
    ) -> None:
        reserve = call.reserves[0]
        held = await self.reserve(reserve)
        if isinstance(held, errors.Reply):
            return await reply(send, held)
        rid = held
        headers = to_upstream(call.headers, self.api_key)
        settlement: Settlement = Release(reason="no answer from upstream")
        try:
            async with self.upstream.request(method, target, headers, body) as response:
                settler = MessageSettler(reserve, response.status, response.raw_headers)
                returned = from_upstream(response.raw_headers)
                returned.append((RESERVATION_HEADER, rid.encode()))
                await send(
                    {"type": "http.response.start", "status": response.status, "headers": returned}
                )
                complete = False
                # A caller that hangs up is noticed at the next chunk: the stream is then
                # abandoned (upstream connection closed, so generation stops) and settled.
                gone = asyncio.ensure_future(receive())
                try:
                    async for chunk in response.content.iter_any():
                        settler.feed(chunk)
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        if gone.done():
                            break
                    else:
                        complete = True
                except (aiohttp.ClientError, TimeoutError) as exc:
                    log.warning("upstream answer broke for reservation %s: %r", rid, exc)
                finally:
                    gone.cancel()
                    settlement = settler.settle(complete=complete)
                if complete:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Before any answer: nothing was billed, nothing was sent to the caller yet.
            await self.settle(rid, reserve, settlement)
            return await reply(send, unreachable(exc))
        # Incomplete: the response is left unfinished, so the server cuts the caller's
        # connection as Anthropic cut ours (ASGI: an app that returns mid-body aborts it).
        await self.settle(rid, reserve, settlement)

    async def settle(self, rid: str, reserve: Reserve | None, settlement: Settlement) -> None:
        """Commit or release ``rid``; a failure here is logged (the caller has its answer) and
        the hold's lease returns it later."""
        try:
            if isinstance(settlement, Release):
                await self.engine.release(self.org, rid)
                return
            assert reserve is not None
            await self._commit(rid, reserve, settlement)
        except BudgetdError as exc:
            log.error("could not settle reservation %s of org %s: %s", rid, self.org, exc.detail)

    async def settle_release(self, rid: str) -> None:
        await self.settle(rid, None, Release(reason="not sent"))

    async def _commit(self, rid: str, reserve: Reserve, commit: Commit) -> None:
        try:
            usage = msgspec.convert(commit.usage, Usage, strict=False)
        except msgspec.ValidationError:
            log.error(
                "unreadable usage for reservation %s: %r; charging the hold", rid, commit.usage
            )
            usage = msgspec.convert(worst_case_usage(reserve), Usage)
        request = CommitRequest(usage=usage, model=commit.model, batch=commit.batch)
        try:
            await self.engine.commit(self.org, rid, request, key=self.key)
        except UnknownModel:
            # The answer named a model the price table does not know: price it as reserved.
            await self.engine.commit(
                self.org, rid, msgspec.structs.replace(request, model=None), key=self.key
            )

    async def passthrough(
        self, call: Call, method: str, target: str, body: bytes, send: Send
    ) -> None:
        """A call that spends nothing (count_tokens, models, batch status): forwarded, its
        answer streamed back."""
        headers = to_upstream(call.headers, self.api_key)
        started = False
        try:
            async with self.upstream.request(method, target, headers, body or None) as response:
                returned = from_upstream(response.raw_headers)
                await send(
                    {"type": "http.response.start", "status": response.status, "headers": returned}
                )
                started = True
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (aiohttp.ClientError, TimeoutError) as exc:
            if not started:
                await reply(send, unreachable(exc))
            # else: left unfinished, so the caller's connection is cut like ours was.


def unreachable(exc: BaseException) -> errors.Reply:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return errors.error(504, "budgetd: Anthropic did not answer in time; nothing was charged")
    return errors.error(502, f"budgetd: could not reach Anthropic ({exc!r}); nothing was charged")
