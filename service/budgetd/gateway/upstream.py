"""The connection pool to Anthropic: one aiohttp session per process, kept alive.

aiohttp rather than httpx: through the same loopback fake, aiohttp answered 64 concurrent
streaming calls at p50 15 ms / p99 50 ms where httpx took 122 / 806 ms, and 8 in flight at
p50 3.4 ms where httpx took 9.8 ms (docs/performance.md, "Gateway"). Bodies come back exactly
as sent (no decompression: the settler decodes gzip itself, the caller gets the same bytes)."""

from __future__ import annotations

import aiohttp
from yarl import URL

from budgetd.gateway.settings import GatewaySettings

Headers = list[tuple[bytes, bytes]]


class Upstream:
    def __init__(self, settings: GatewaySettings) -> None:
        self.base_url = settings.upstream_url
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use, inside the serving event loop (a session is bound to its loop).
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                timeout=self._timeout,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type", "Accept"),
            )
        return self._session

    def request(
        self, method: str, target: str, headers: Headers, body: bytes | None
    ) -> aiohttp.client._RequestContextManager:
        """``async with upstream.request(...) as response``: ``target`` is the path and query
        as the caller sent them."""
        return self._open().request(
            method,
            # encoded=True: the caller's path and query go upstream exactly as they came.
            URL(self.base_url + target, encoded=True),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
            data=body,
            allow_redirects=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
