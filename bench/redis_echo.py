"""The floor of a service that makes one Redis script call per request: ``raw_echo.py`` plus
one ``EVALSHA`` of a script that only returns, over a minimal pipelined RESP connection.

Every design budgetd may have keeps one atomic script per reserve and per commit (DESIGN.md), so
each request pays one Redis round trip: a write, a wake-up when the reply comes, a read. This
app pays exactly that and nothing of budgetd's own: no plan, no keys or arguments to pack, no
answer to build, the reply not even parsed past its first byte. The service's CPU per request
over this one is budgetd's own work; this one's over ``raw_echo.py`` is the round trip's.

Run by ``reserve_commit.py`` as ``uvicorn redis_echo:app --app-dir bench`` with
``REDIS_ECHO_PORT`` set to its Redis; not part of the service.
"""

from __future__ import annotations

import asyncio
import collections
import os
from typing import Any

import msgspec

from raw_echo import (
    COMMIT_SUFFIX,
    RESERVE_PATH,
    Echo,
    _answer,
    _body,
    _decode_commit,
    _decode_reserve,
    _encode,
)

SCRIPT = b"return 1"


class _Redis(asyncio.Protocol):
    """One connection, calls pipelined: replies come back in the order the calls were written.
    Every reply here is one line (``:1`` or ``$40`` + the sha, read by ``load``)."""

    def __init__(self) -> None:
        self.waiting: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.waiting:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            if line.startswith(b"$"):  # a bulk string (the sha): its data line follows
                second = self.buffer.find(b"\r\n")
                if second < 0:
                    self.buffer = line + b"\r\n" + self.buffer
                    return
                line, self.buffer = self.buffer[:second], self.buffer[second + 2 :]
            self.waiting.popleft().set_result(line)

    def call(self, *args: bytes) -> asyncio.Future[bytes]:
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.transport.write(b"".join(parts))
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        return future


class _Floor:
    """The connection and the loaded script's sha, made at start-up."""

    conn: _Redis
    sha: bytes

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.conn = await loop.create_connection(
            _Redis, "127.0.0.1", int(os.environ["REDIS_ECHO_PORT"])
        )
        self.sha = await self.conn.call(b"SCRIPT", b"LOAD", SCRIPT)

    async def round_trip(self) -> None:
        reply = await self.conn.call(b"EVALSHA", self.sha, b"0")
        if reply != b":1":
            raise RuntimeError(f"redis answered {reply!r}")


_floor = _Floor()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``raw_echo.app`` with one script call per reserve and per commit."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await _floor.connect()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http" or scope["method"] != "POST":
        await _answer(send, 405, b"{}")
        return
    path: str = scope["path"]
    try:
        if path == RESERVE_PATH:
            reserve = _decode_reserve(await _body(receive))
            await _floor.round_trip()
            await _answer(send, 201, _encode(Echo(ok=True, id=reserve.reservation_id or "")))
            return
        if path.startswith(RESERVE_PATH + "/") and path.endswith(COMMIT_SUFFIX):
            _decode_commit(await _body(receive))
            await _floor.round_trip()
            rid = path[len(RESERVE_PATH) + 1 : -len(COMMIT_SUFFIX)]
            await _answer(send, 200, _encode(Echo(ok=b"org=" in scope["query_string"], id=rid)))
            return
    except (msgspec.ValidationError, msgspec.DecodeError):
        await _answer(send, 400, b"{}")
        return
    await _answer(send, 404, b"{}")
