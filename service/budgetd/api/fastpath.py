"""Reserve, commit and release, served over raw ASGI in front of Litestar: the one
implementation of these routes (Litestar's per-request machinery — routing, kwargs extraction,
signature model, a decode to ``Any`` then a convert, ``Response`` — was about a quarter of a
reserve's CPU). Every other path goes to Litestar untouched.

Every answer of these routes is built here: the body and the query go through
``api/validation`` (as Litestar's handlers' do), errors through ``api/problems``, and the
OpenAPI of these routes is described next to them (``OPERATIONS``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import parse_qsl

import msgspec
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import (
    HTTPScope,
    LifeSpanReceive,
    LifeSpanScope,
    LifeSpanSend,
    Receive,
    Scope,
    Send,
)

from budgetd.api.deps import caller_of, org_of
from budgetd.api.openapi import Operation
from budgetd.api.problems import (
    PROBLEM_JSON,
    Problem,
    denied_problem,
    error_problem,
    internal_error_problem,
    method_not_allowed_problem,
)
from budgetd.api.validation import (
    MAX_BODY_BYTES,
    MAX_URL_CHARS,
    convert_query,
    decode,
)
from budgetd.contract import (
    RESERVATION_ID_PATTERN,
    RESERVATION_ID_WORDS,
    CommitRequest,
    CommitResult,
    Denied,
    Grant,
    OrgQuery,
    ReleaseResult,
    ReserveQuery,
    ReserveRequest,
)
from budgetd.engine import Engine
from budgetd.errors import BudgetdError, InvalidRequest, PayloadTooLarge, UriTooLong

log = logging.getLogger("budgetd")

AnyScope = Scope | LifeSpanScope
AnyReceive = Receive | LifeSpanReceive
AnySend = Send | LifeSpanSend
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

RESERVE_PATH = "/v1/reservations"
_PREFIX = RESERVE_PATH + "/"
_ACTION = re.compile(r"([^/]*)/(commit|release)")
_ID = re.compile(RESERVATION_ID_PATTERN)
# ``?org=<name>`` with nothing to unquote: the common query, read without parse_qsl.
_ORG_QUERY = re.compile(rb"org=([A-Za-z0-9_.\-]+)")

_JSON = b"application/json"
_PROBLEM = PROBLEM_JSON.encode()
_encode = msgspec.json.encode


_RESERVATION_ID = {
    "type": "string",
    "pattern": RESERVATION_ID_PATTERN,
    "description": f"The reservation: {RESERVATION_ID_WORDS}.",
}
OPERATIONS = [
    Operation(
        "POST",
        RESERVE_PATH,
        "Reserve the worst-case cost of a call",
        "reserve",
        ok=(201, Grant),
        body=ReserveRequest,
        query=ReserveQuery,
        problems=(403, 404, 409, 422, 429, 503),
        tags=("reservations",),
        description="A replay (same reservation_id, same body) answers 201 again with "
        "`replayed: true`; the same id with another body is 409. Answer v2: the grant's "
        "`scopes` is empty unless `?detail=scopes` asks for the state of every applicable "
        "limit; a denial (429) always names the denying scopes, with `Retry-After`.",
        links={
            action: {
                "operationId": action,
                "parameters": {
                    "reservation_id": "$response.body#/reservation_id",
                    "org": "$request.body#/org",
                },
                "description": f"{action.capitalize()} the reservation just granted.",
            }
            for action in ("commit", "release")
        },
    ),
    Operation(
        "POST",
        RESERVE_PATH + "/{reservation_id}/commit",
        "Settle the actual cost from the response's usage",
        "commit",
        ok=(200, CommitResult),
        body=CommitRequest,
        query=OrgQuery,
        path_params={"reservation_id": _RESERVATION_ID},
        problems=(403, 404, 409, 422, 503),
        tags=("reservations",),
    ),
    Operation(
        "POST",
        RESERVE_PATH + "/{reservation_id}/release",
        "Void the hold (the call failed)",
        "release",
        ok=(200, ReleaseResult),
        query=OrgQuery,
        path_params={"reservation_id": _RESERVATION_ID},
        problems=(403, 404, 409, 422, 503),
        tags=("reservations",),
    ),
]


class _Disconnected(Exception):
    pass


class FastPath:
    """ASGI app: the reservation routes served here, everything else by ``fallback`` (``app``
    itself unless given: ``Budgetd`` passes Litestar's own ``__call__``)."""

    def __init__(self, app: Litestar, fallback: ASGIApp | None = None) -> None:
        self.app = app
        self.fallback: ASGIApp = fallback if fallback is not None else app

    async def __call__(self, scope: AnyScope, receive: AnyReceive, send: AnySend) -> None:
        if scope["type"] == ScopeType.HTTP:
            return await self._http(
                cast(HTTPScope, scope), cast(Receive, receive), cast(Send, send)
            )
        await self.fallback(scope, receive, send)

    async def _http(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        root = scope.get("root_path")
        if root and path.startswith(root):
            path = path[len(root) :]
        if len(path) + len(scope["query_string"]) > MAX_URL_CHARS:
            return await _send_problem(
                send,
                error_problem(
                    UriTooLong(
                        f"the path and query are {len(path) + len(scope['query_string'])} "
                        f"characters; budgetd answers at most {MAX_URL_CHARS}"
                    )
                ),
            )
        if path == RESERVE_PATH:
            if scope["method"] != "POST":
                return await _send_problem(send, method_not_allowed_problem(["POST"]))
            return await self._reserve(scope, receive, send)
        if path.startswith(_PREFIX) and (match := _ACTION.fullmatch(path, len(_PREFIX))):
            if scope["method"] != "POST":
                return await _send_problem(send, method_not_allowed_problem(["POST"]))
            rid, action = match.group(1, 2)
            if action == "commit":
                return await self._commit(scope, receive, send, rid)
            return await self._release(scope, send, rid)
        await self.fallback(scope, receive, send)

    # -- routes --------------------------------------------------------------------------------

    async def _reserve(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        state = self.app.state

        async def reserve() -> Any:
            principal = caller_of(state, _authorizations(scope))
            with_scopes = False
            if scope["query_string"]:
                with_scopes = convert_query(_query(scope), ReserveQuery).detail == "scopes"
            data = decode(await _body(scope, receive), ReserveRequest)
            principal.require_org(data.org)
            engine: Engine = state.engine
            return await engine.reserve(data, key=principal.key, with_scopes=with_scopes)

        await _answer(scope, send, 201, reserve)

    async def _commit(self, scope: HTTPScope, receive: Receive, send: Send, rid: str) -> None:
        state = self.app.state

        async def commit() -> Any:
            principal = caller_of(state, _authorizations(scope))
            reservation_id = _reservation_id(rid)
            org = _org(scope)
            data = decode(await _body(scope, receive), CommitRequest)
            engine: Engine = state.engine
            return await engine.commit(
                org_of(principal, org), reservation_id, data, key=principal.key
            )

        await _answer(scope, send, 200, commit)

    async def _release(self, scope: HTTPScope, send: Send, rid: str) -> None:
        # Release takes no body and never reads one.
        state = self.app.state

        async def release() -> Any:
            principal = caller_of(state, _authorizations(scope))
            reservation_id = _reservation_id(rid)
            org = _org(scope)
            engine: Engine = state.engine
            return await engine.release(org_of(principal, org), reservation_id)

        await _answer(scope, send, 200, release)


# -- request parts ---------------------------------------------------------------------------


def _reservation_id(rid: str) -> str:
    if not _ID.fullmatch(rid):
        shown = rid if len(rid) <= 40 else rid[:40] + "…"
        raise InvalidRequest(
            f"reservation_id in the path has the wrong format: expected {RESERVATION_ID_WORDS} "
            f"(got {shown!r})",
            field="reservation_id",
        )
    return rid


def _query(scope: HTTPScope) -> list[tuple[str, str]]:
    return parse_qsl(
        bytes(scope["query_string"]).decode("latin-1"), keep_blank_values=True, errors="strict"
    )


def _org(scope: HTTPScope) -> str | None:
    query = scope["query_string"]
    if not query:
        return None
    if q := _ORG_QUERY.fullmatch(query):
        return q.group(1).decode()
    try:
        return convert_query(_query(scope), OrgQuery).org
    except UnicodeDecodeError:
        raise InvalidRequest("the query string is not valid percent-encoded UTF-8") from None


def _authorizations(scope: HTTPScope) -> list[str]:
    """Every ``authorization`` header, decoded as Litestar's ``Headers`` decode them."""
    return [bytes(v).decode("latin-1") for k, v in scope["headers"] if k == b"authorization"]


async def _body(scope: HTTPScope, receive: Receive) -> bytes:
    """The whole body; ``PayloadTooLarge`` as soon as it exceeds the limit."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > MAX_BODY_BYTES:
                raise PayloadTooLarge(
                    f"the body is {int(value)} bytes; budgetd takes at most {MAX_BODY_BYTES}"
                )
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _Disconnected
        chunk = message.get("body", b"")
        if not chunks and not message.get("more_body", False):
            return chunk  # the whole body in one message: the common case
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"the body exceeds the {MAX_BODY_BYTES} bytes budgetd takes")
        if not message.get("more_body", False):
            return b"".join(chunks)


# -- answers ---------------------------------------------------------------------------------


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
    """Run the route and send its answer, or the problem it raised."""
    try:
        result = await call()
    except BudgetdError as exc:
        return await _send_problem(send, error_problem(exc))
    except _Disconnected:
        return None
    except Exception:
        log.exception("unhandled error on %s %s", scope["method"], scope["path"])
        return await _send_problem(send, internal_error_problem())
    if isinstance(result, Denied):
        return await _send_problem(send, denied_problem(result))
    await _send(send, status, _JSON, _encode(result))
