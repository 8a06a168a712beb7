"""The hot routes over raw ASGI: reserve, commit and release without Litestar's per-request
machinery (routing, kwargs extraction, signature model, a decode to ``Any`` then a convert,
``Response``), which was about a quarter of a reserve's CPU.

It answers exactly what the Litestar handlers in ``api/reservations.py`` answer: the same
functions (``caller_of``, ``org_of``, the engine, ``api/problems``) and the same encoder, so the
same status codes, bodies and headers. Those handlers stay: they define the OpenAPI schema and
serve everything this path hands back to Litestar, untouched:

* anything but ``POST /v1/reservations`` and ``POST /v1/reservations/<id>/commit|release``
  with a well-formed id, no root path, and a query string that is empty or exactly
  ``org=<name>`` (Litestar's own query parsing decides the rest);
* a body that does not decode into the request Struct (invalid JSON, a wrong or missing field)
  or is larger than the app's limit: the body read so far is replayed to Litestar, which
  answers its 400/413/422 problem itself, with its own error messages.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import msgspec
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import (
    HTTPScope,
    LifeSpanReceive,
    LifeSpanScope,
    LifeSpanSend,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from budgetd.api.deps import caller_of, org_of
from budgetd.api.problems import PROBLEM_JSON, Problem, denied_problem, error_problem
from budgetd.contract import CommitRequest, Denied, ReserveRequest
from budgetd.engine import Engine
from budgetd.errors import BudgetdError

log = logging.getLogger("budgetd")

AnyScope = Scope | LifeSpanScope
AnyReceive = Receive | LifeSpanReceive
AnySend = Send | LifeSpanSend
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

RESERVE_PATH = "/v1/reservations"
_PREFIX = RESERVE_PATH + "/"
# The id pattern of api/reservations.ReservationId; anything else goes to Litestar (its 422).
_ACTION = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.:@\-]{0,255})/(commit|release)")
# ``?org=<name>`` with nothing to unquote; other query strings go to Litestar's parser.
_ORG_QUERY = re.compile(rb"org=([A-Za-z0-9_.\-]+)")

_JSON = b"application/json"
_PROBLEM = PROBLEM_JSON.encode()
# Litestar's answer to an exception no handler claims (its default 500), byte for byte.
_INTERNAL_ERROR = b'{"status_code":500,"detail":"Internal Server Error"}'

# Litestar decodes the body to Python objects and converts them with strict=False; a typed
# decode with strict=False accepts and rejects the same documents, and builds the same Struct.
_reserve_decoder = msgspec.json.Decoder(ReserveRequest, strict=False)
_commit_decoder = msgspec.json.Decoder(CommitRequest, strict=False)
_encode = msgspec.json.encode
T = TypeVar("T")


class _Delegate(Exception):
    """The body is read and Litestar must answer: replay it."""

    def __init__(self, chunks: list[bytes], *, more_body: bool = False) -> None:
        super().__init__()
        self.chunks = chunks
        self.more_body = more_body


class _Disconnected(Exception):
    pass


class FastPath:
    """ASGI app: the hot routes of ``app`` served directly, everything else by ``fallback``
    (``app`` itself unless given: ``Budgetd`` passes Litestar's own ``__call__``)."""

    def __init__(self, app: Litestar, fallback: ASGIApp | None = None) -> None:
        self.app = app
        self.fallback: ASGIApp = fallback if fallback is not None else app
        limit = app.request_max_body_size
        self.max_body: float = limit if isinstance(limit, int) else float("inf")

    async def __call__(self, scope: AnyScope, receive: AnyReceive, send: AnySend) -> None:
        if scope["type"] == ScopeType.HTTP and (http := cast(HTTPScope, scope))["method"] == "POST":
            return await self._http(http, cast(Receive, receive), cast(Send, send))
        await self.fallback(scope, receive, send)

    async def _http(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        if not scope.get("root_path"):
            path = scope["path"]
            if path == RESERVE_PATH:
                if not scope["query_string"]:
                    return await self._reserve(scope, receive, send)
            elif path.startswith(_PREFIX) and (match := _ACTION.fullmatch(path, len(_PREFIX))):
                query = scope["query_string"]
                if not query:
                    org = None
                elif q := _ORG_QUERY.fullmatch(query):
                    org = q.group(1).decode()
                else:
                    return await self.fallback(scope, receive, send)
                rid, action = match.group(1, 2)
                if action == "commit":
                    return await self._commit(scope, receive, send, rid, org)
                return await self._release(scope, send, rid, org)
        await self.fallback(scope, receive, send)

    # -- routes (each mirrors its handler in api/reservations.py) ----------------------------

    async def _reserve(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        data = await self._read(scope, receive, send, _reserve_decoder)
        if data is None:
            return
        state = self.app.state

        async def reserve() -> Any:
            caller_of(state, _authorization(scope)).require_org(data.org)
            engine: Engine = state.engine
            return await engine.reserve(data)

        await _answer(scope, send, 201, reserve)

    async def _commit(
        self, scope: HTTPScope, receive: Receive, send: Send, rid: str, org: str | None
    ) -> None:
        data = await self._read(scope, receive, send, _commit_decoder)
        if data is None:
            return
        state = self.app.state

        async def commit() -> Any:
            engine: Engine = state.engine
            return await engine.commit(
                org_of(caller_of(state, _authorization(scope)), org), rid, data
            )

        await _answer(scope, send, 200, commit)

    async def _release(self, scope: HTTPScope, send: Send, rid: str, org: str | None) -> None:
        # Like the Litestar handler, release has no body and never reads one.
        state = self.app.state

        async def release() -> Any:
            engine: Engine = state.engine
            return await engine.release(org_of(caller_of(state, _authorization(scope)), org), rid)

        await _answer(scope, send, 200, release)

    # -- plumbing ------------------------------------------------------------------------------

    async def _read(
        self, scope: HTTPScope, receive: Receive, send: Send, decoder: msgspec.json.Decoder[T]
    ) -> T | None:
        """The decoded body; None when the request went to Litestar instead (a body that does
        not decode, or one over the limit) or the client left."""
        try:
            body = await self._body(scope, receive)
            try:
                return decoder.decode(body)
            except (msgspec.ValidationError, msgspec.DecodeError):
                raise _Delegate([body]) from None
        except _Delegate as d:
            await self.fallback(scope, _replay(d, receive), send)
        except _Disconnected:
            pass
        return None

    async def _body(self, scope: HTTPScope, receive: Receive) -> bytes:
        """The whole body; ``_Delegate`` (with what was read) when it exceeds the limit, which
        Litestar then answers with its 413."""
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_body:
                    raise _Delegate([])
                break
        message = await receive()
        if message["type"] != "http.request":
            raise _Disconnected
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False) and len(body) <= self.max_body:
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            if size > self.max_body:
                raise _Delegate(chunks, more_body=True)
            message = await receive()
            if message["type"] != "http.request":
                raise _Disconnected
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
        if size > self.max_body:
            raise _Delegate(chunks)
        return b"".join(chunks)


def _authorization(scope: HTTPScope) -> str | None:
    """The first ``authorization`` header, decoded as Litestar's ``Headers`` decode it."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value).decode("latin-1")
    return None


def _replay(delegate: _Delegate, receive: Receive) -> Receive:
    """``receive`` that first gives back the chunks already read, then continues with the
    client's (if the body had not ended)."""
    pending = list(delegate.chunks)
    more_body = delegate.more_body

    async def replayed() -> ReceiveMessage:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending) or more_body}
        return await receive()

    return replayed


async def _send(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_problem(send: Send, problem: Problem) -> None:
    body = _encode(problem.body)
    headers = [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in problem.headers.items()
    ]
    headers += [(b"content-type", _PROBLEM), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _answer(
    scope: HTTPScope, send: Send, status: int, call: Callable[[], Awaitable[Any]]
) -> None:
    """Run the route's engine call and send its answer, or the problem it raised."""
    try:
        result = await call()
    except BudgetdError as exc:
        return await _send_problem(send, error_problem(exc))
    except Exception:
        return await _internal_error(send, scope)
    if isinstance(result, Denied):
        return await _send_problem(send, denied_problem(result))
    await _send(send, status, _JSON, _encode(result))


async def _internal_error(send: Send, scope: HTTPScope) -> None:
    log.exception("unhandled error on %s %s", scope["method"], scope["path"])
    await _send(send, 500, _JSON, _INTERNAL_ERROR)
