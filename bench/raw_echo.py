"""The floor for ``reserve_commit.py``: the service's two routes as a bare ASGI app, no Litestar.

Same server (uvicorn + uvloop + httptools), same paths, same request bodies decoded with msgspec
into the same ``budgetd.contract`` Structs, the same small answer as ``echo_app.py``. What is
left is the cost of HTTP itself in this stack: uvicorn's parsing and event plumbing, one body
read, one decode, one encode. The service's CPU per request over this one is what budgetd (and
Litestar, for what the fast path still passes through it) adds on top of serving HTTP at all.

Run by the bench as ``uvicorn raw_echo:app --app-dir bench``; not part of the service.
"""

from __future__ import annotations

from typing import Any

import msgspec

from budgetd.contract import CommitRequest, ReserveRequest

RESERVE_PATH = "/v1/reservations"
COMMIT_SUFFIX = "/commit"


class Echo(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    id: str


_decode_reserve = msgspec.json.Decoder(ReserveRequest).decode
_decode_commit = msgspec.json.Decoder(CommitRequest).decode
_encode = msgspec.json.encode
_JSON = [(b"content-type", b"application/json")]


async def _body(receive: Any) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def _answer(send: Any, status: int, body: bytes) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reserve and commit echoes; 404/405/400 for anything else or a body that does not decode
    (the bench only sends valid requests and counts any other status as a failed pair)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    if scope["method"] != "POST":
        await _answer(send, 405, b"{}")
        return
    try:
        if path == RESERVE_PATH:
            reserve = _decode_reserve(await _body(receive))
            await _answer(send, 201, _encode(Echo(ok=True, id=reserve.reservation_id or "")))
            return
        if path.startswith(RESERVE_PATH + "/") and path.endswith(COMMIT_SUFFIX):
            _decode_commit(await _body(receive))
            rid = path[len(RESERVE_PATH) + 1 : -len(COMMIT_SUFFIX)]
            org = b"org=" in scope["query_string"]
            await _answer(send, 200, _encode(Echo(ok=org, id=rid)))
            return
    except (msgspec.ValidationError, msgspec.DecodeError):
        await _answer(send, 400, b"{}")
        return
    await _answer(send, 404, b"{}")
