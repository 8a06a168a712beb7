"""The client's own HTTP/1.1 connections to budgetd: kept alive, pooled, one write per request.

budgetd's calls are small JSON requests to one host, on the path of every Claude call, so
their cost is what the app feels (issue 13). Measured on loopback (docs/performance.md,
"Client latency"): httpx spends 400–700 µs of client CPU per request; the standard library's
``http.client`` (sync) and ``aiohttp`` (async, a C parser) spend 100–150 µs. The sync pool
writes each request in one ``sendall`` (head and body: one wake-up of the server, not two),
with ``TCP_NODELAY``.
These are the defaults; an ``http_client`` or ``transport`` given to a client keeps httpx.

Both pools keep idle connections for at most ``KEEPALIVE_S`` (below uvicorn's 5 s, so budgetd
rarely closes one under us) and skip one the server has closed. The sync pool also sends a
request again, at once, on a fresh connection when a *reused* one turns out dead before any
answer came (the server closed it as we sent). Every other failure is :class:`WireError`,
which the client retries with backoff (stamina), whichever wire carried it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import httpx

KEEPALIVE_S = 4.0
"""Idle connections older than this are closed rather than reused."""
POOL_SIZE = 16
"""Idle connections kept per client (more may be open while more calls are in flight)."""


class Reply(Protocol):
    """What the client reads of an answer (an ``httpx.Response`` is one too)."""

    @property
    def status_code(self) -> int: ...
    @property
    def content(self) -> bytes: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def text(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Answer:
    status_code: int
    content: bytes
    headers: Mapping[str, str]
    """Header names lower-cased."""

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class WireError(Exception):
    """No answer: the connection failed, timed out or was closed mid-answer."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float | None
    read_s: float | None


@dataclass(frozen=True, slots=True)
class Origin:
    """Where budgetd listens, from the client's base URL."""

    https: bool
    host: str
    port: int
    prefix: str

    @classmethod
    def of(cls, base_url: str) -> Origin:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"budgetd URL must be http(s)://host[:port][/path]: {base_url!r}")
        https = url.scheme == "https"
        return cls(https, url.hostname, url.port or (443 if https else 80), url.path.rstrip("/"))

    def target(self, path: str, params: Mapping[str, str] | None) -> str:
        return self.prefix + path + ("?" + urlencode(params) if params else "")


_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
"""What a request on a connection the server closed while idle fails with, before any answer."""
_SAFE_PATH = "/-._~!$&'()*+,;=:@%"
"""Left as they are in a request path; anything else (spaces, control characters) is %-quoted,
as httpx does, so no caller-chosen id can break the request line."""
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _dropped(sock: socket.socket) -> bool:
    """The peer closed (or wrote unasked to) an idle connection: readable means unusable."""
    poll = getattr(select, "poll", None)
    if poll is None:  # Windows: select() takes any socket there
        return bool(select.select([sock], [], [], 0)[0])
    poller = poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


MAX_ANSWER = 16 << 20
"""Bytes of one answer, head and body, at most (budgetd's are a few KiB)."""


def _more(sock: socket.socket, buf: bytearray) -> None:
    chunk = sock.recv(65536)
    if not chunk:
        if not buf:  # closed before answering: an idle close (see _STALE)
            raise http.client.RemoteDisconnected("closed without an answer")
        raise WireError("connection closed mid-answer")
    buf += chunk
    if len(buf) > MAX_ANSWER:
        raise WireError(f"answer over {MAX_ANSWER} bytes")


def _line(sock: socket.socket, buf: bytearray) -> bytes:
    while (eol := buf.find(b"\r\n")) < 0:
        _more(sock, buf)
    line = bytes(buf[:eol])
    del buf[: eol + 2]
    return line


def _chunked(sock: socket.socket, buf: bytearray) -> bytes:
    body = bytearray()
    while size := int(_line(sock, buf).split(b";", 1)[0], 16):
        while len(buf) < size + 2:
            _more(sock, buf)
        body += buf[:size]
        del buf[: size + 2]
        if len(body) > MAX_ANSWER:
            raise WireError(f"answer over {MAX_ANSWER} bytes")
    while _line(sock, buf):  # trailers, up to the empty line
        pass
    return bytes(body)


def read_answer(sock: socket.socket) -> tuple[Answer, bool]:
    """One HTTP/1.x answer from ``sock`` (to a request that is not HEAD), and whether the
    connection may carry another. Content-Length, chunked, or (neither) up to the close."""
    buf = bytearray()
    while (end := buf.find(b"\r\n\r\n")) < 0:
        _more(sock, buf)
    status_line, *lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[: end + 4]
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
        raise WireError(f"not an HTTP/1 answer: {status_line[:80]!r}")
    status = int(rest[:3])
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise WireError(f"malformed header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    reusable = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    if status < 200 or status in (204, 304):
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = _chunked(sock, buf)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if length > MAX_ANSWER:
            raise WireError(f"answer over {MAX_ANSWER} bytes")
        while len(buf) < length:
            _more(sock, buf)
        body = bytes(buf[:length])
        del buf[:length]
    else:
        with contextlib.suppress(WireError, http.client.RemoteDisconnected):
            while True:
                _more(sock, buf)
        body, reusable = bytes(buf), False
        buf.clear()
    # Bytes after the answer were never asked for: do not reuse such a connection.
    return Answer(status, body, headers), reusable and not buf


class SyncWire:
    """A thread-safe pool of keep-alive sockets to one origin (last used first). A request is
    written by hand, head and body in one ``sendall``; the answer is read by
    :func:`read_answer` (the standard library's parser goes through ``email``: half of the
    client's CPU per request)."""

    def __init__(self, base_url: str, timeouts: Timeouts, pool_size: int = POOL_SIZE) -> None:
        self.origin = Origin.of(base_url)
        self.timeouts = timeouts
        self.pool_size = max(0, pool_size)
        default_port = 443 if self.origin.https else 80
        port = "" if self.origin.port == default_port else f":{self.origin.port}"
        self._host = f"Host: {self.origin.host}{port}\r\n"
        self._tls = ssl.create_default_context() if self.origin.https else None
        self._idle: list[tuple[float, socket.socket]] = []
        self._lock = threading.Lock()
        _POOLS.add(self)

    def _forget_after_fork(self) -> None:
        # The idle sockets are shared with the parent after a fork: two processes writing
        # requests and reading each other's answers on one connection. The child drops its
        # copies and opens its own. close() releases only this process's descriptor (no
        # shutdown, no TLS close_notify): the parent's connection stays up.
        for _, sock in self._idle:
            sock.close()
        self._idle = []
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str],
    ) -> Answer:
        target = quote(self.origin.prefix + path, safe=_SAFE_PATH)
        if params:
            target += "?" + urlencode(params)
        lines = [f"{method} {target} HTTP/1.1\r\n", self._host]
        lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
        if body is not None or method in _BODY_METHODS:
            lines.append(f"content-length: {len(body or b'')}\r\n")
        data = "".join(lines).encode("latin-1") + b"\r\n" + (body or b"")
        sock, reused = self._checkout()
        try:
            return self._exchange(sock, data)
        except _STALE as exc:
            if not reused:
                raise WireError(repr(exc)) from exc
        # The server closed the idle connection as we sent: nothing was answered, send again.
        return self._exchange(self._new(), data)

    def _exchange(self, sock: socket.socket, data: bytes) -> Answer:
        try:
            sock.sendall(data)
            answer, reusable = read_answer(sock)
        except _STALE:
            sock.close()
            raise
        except WireError:
            sock.close()
            raise
        except (OSError, ValueError) as exc:  # ValueError: a malformed length
            sock.close()
            raise WireError(repr(exc)) from exc
        if reusable:
            self._checkin(sock)
        else:
            sock.close()
        return answer

    def _checkout(self) -> tuple[socket.socket, bool]:
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._idle:
                    break
                since, sock = self._idle.pop()
            if now - since < KEEPALIVE_S and not _dropped(sock):
                return sock, True
            sock.close()
        return self._new(), False

    def _checkin(self, sock: socket.socket) -> None:
        with self._lock:
            if len(self._idle) < self.pool_size:
                self._idle.append((time.monotonic(), sock))
                return
        sock.close()

    def _new(self) -> socket.socket:
        try:
            sock = socket.create_connection(
                (self.origin.host, self.origin.port), timeout=self.timeouts.connect_s
            )
        except OSError as exc:
            raise WireError(repr(exc)) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.origin.host)
            sock.settimeout(self.timeouts.read_s)
        except OSError as exc:
            sock.close()
            raise WireError(repr(exc)) from exc
        return sock

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, sock in idle:
            sock.close()


_POOLS: weakref.WeakSet[SyncWire] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class AsyncWire:
    """An ``aiohttp`` session to one origin, made on first use in the caller's event loop
    (idle connections kept, none capped: a call never waits for a free one)."""

    def __init__(self, base_url: str, timeouts: Timeouts) -> None:
        self.origin = Origin.of(base_url)
        scheme = "https" if self.origin.https else "http"
        self.base = f"{scheme}://{self.origin.host}:{self.origin.port}"
        self.timeout = aiohttp.ClientTimeout(
            total=None, connect=timeouts.connect_s, sock_read=timeouts.read_s
        )
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # A session's connections belong to the loop that made them: a client used under
            # a second event loop (asyncio.run twice) gets a session of its own there. The
            # first loop's is gone with that loop.
            self._loop = loop
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=0, keepalive_timeout=KEEPALIVE_S, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self.timeout,
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding",),
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str],
    ) -> Answer:
        url = self.base + self.origin.target(path, params)
        session = self._session_now()
        try:
            async with session.request(method, url, data=body, headers=headers) as response:
                content = await response.read()
                return Answer(
                    response.status,
                    content,
                    {k.lower(): v for k, v in response.headers.items()},
                )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise WireError(repr(exc)) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpxWire:
    """The app's own ``httpx.Client`` (or one over its transport): proxies, mounts, test
    transports. Owned ones are closed with the client."""

    def __init__(self, base_url: str, client: httpx.Client, owned: bool) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.owned = owned

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str],
    ) -> httpx.Response:
        try:
            return self.client.request(
                method, self.base_url + path, content=body, params=params, headers=headers
            )
        except httpx.TransportError as exc:
            raise WireError(repr(exc)) from exc

    def close(self) -> None:
        if self.owned:
            self.client.close()


class AsyncHttpxWire:
    """The async :class:`HttpxWire`."""

    def __init__(self, base_url: str, client: httpx.AsyncClient, owned: bool) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.owned = owned

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str],
    ) -> httpx.Response:
        try:
            return await self.client.request(
                method, self.base_url + path, content=body, params=params, headers=headers
            )
        except httpx.TransportError as exc:
            raise WireError(repr(exc)) from exc

    async def aclose(self) -> None:
        if self.owned:
            await self.client.aclose()


def timeouts_of(timeout: float | httpx.Timeout) -> Timeouts:
    """The connect and read timeouts of the client's ``timeout`` argument."""
    if isinstance(timeout, httpx.Timeout):
        return Timeouts(timeout.connect, timeout.read)
    return Timeouts(timeout, timeout)


def sync_wire(
    base_url: str,
    timeout: float | httpx.Timeout,
    http_client: httpx.Client | None,
    transport: httpx.BaseTransport | None,
    pool_size: int,
) -> SyncWire | HttpxWire:
    if http_client is not None:
        return HttpxWire(base_url, http_client, owned=False)
    if transport is not None:
        return HttpxWire(base_url, httpx.Client(timeout=timeout, transport=transport), owned=True)
    return SyncWire(base_url, timeouts_of(timeout), pool_size)


def async_wire(
    base_url: str,
    timeout: float | httpx.Timeout,
    http_client: httpx.AsyncClient | None,
    transport: httpx.AsyncBaseTransport | None,
) -> AsyncWire | AsyncHttpxWire:
    if http_client is not None:
        return AsyncHttpxWire(base_url, http_client, owned=False)
    if transport is not None:
        client = httpx.AsyncClient(timeout=timeout, transport=transport)
        return AsyncHttpxWire(base_url, client, owned=True)
    return AsyncWire(base_url, timeouts_of(timeout))
