"""A real HTTP receiver on loopback for notification tests: records what it gets and answers
with scripted status codes (or hangs, or trickles an answer that never ends)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec


class Received(msgspec.Struct, frozen=True, kw_only=True):
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, str]:
        decoded: dict[str, str] = msgspec.json.decode(self.body)
        return decoded


class Receiver:
    """``statuses``: answers in order, then ``then`` forever; ``hang``: never answer;
    ``trickle``: start answering at once, then send a header line every 0.1 s and never finish
    (slow, not silent: no single read of the sender waits long enough to time out)."""

    def __init__(
        self,
        statuses: list[int] | None = None,
        then: int = 200,
        hang: bool = False,
        trickle: bool = False,
    ) -> None:
        self.statuses = list(statuses or [])
        self.then = then
        self.hang = hang
        self.trickle = trickle
        self.received: list[Received] = []
        self.attempts = 0
        self.in_flight = 0
        self.most_in_flight = 0
        """The most requests open at once (a sender that gave up has closed its request)."""
        self.url = ""

    async def _trickle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Until the sender hangs up."""
        writer.write(b"HTTP/1.1 200 OK\r\n")
        while not reader.at_eof():
            await asyncio.sleep(0.1)
            writer.write(b"x-slow: 1\r\n")
            await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.attempts += 1
                if self.trickle:
                    self.in_flight += 1
                    self.most_in_flight = max(self.most_in_flight, self.in_flight)
                    try:
                        await self._trickle(reader, writer)
                    finally:
                        self.in_flight -= 1
                    return
                if self.hang:
                    await asyncio.sleep(3600)
                status = self.statuses.pop(0) if self.statuses else self.then
                if 200 <= status < 300:
                    self.received.append(Received(headers=headers, body=body))
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()
        except (
            asyncio.IncompleteReadError,
            ConnectionResetError,
            BrokenPipeError,
            asyncio.CancelledError,
        ):
            pass
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Receiver]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hook"
        try:
            yield self
        finally:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)


async def wait_for(predicate, timeout_s: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true or the deadline; real time is the subject here."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while loop.time() < end:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())
