"""Raw ASGI plumbing of the gateway: reading the request, sending an answer, and which headers
cross in each direction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from budgetd.gateway.errors import Headers, Reply

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_FORWARDED = frozenset({b"content-type", b"accept", b"accept-encoding", b"user-agent"})
_FORWARDED_PREFIXES = (b"anthropic-", b"x-stainless-")
_NOT_RETURNED = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server", b"set-cookie"}
)


class TooLarge(Exception):
    pass


class Disconnected(Exception):
    pass


async def read_body(receive: Receive, limit: int) -> bytes:
    message = await receive()
    if message["type"] != "http.request":
        raise Disconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise TooLarge
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] != "http.request":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def to_upstream(headers: Iterable[tuple[Any, Any]], api_key: str) -> Headers:
    """What Anthropic gets: the caller's ``anthropic-*`` headers (version, beta flags),
    content negotiation, user agent and the SDK's ``x-stainless-*`` telemetry, with the org's
    Anthropic key instead of the caller's budgetd key. Nothing else (cookies, proxies' headers,
    ``authorization``) leaves."""
    out: Headers = [(b"x-api-key", api_key.encode("latin-1"))]
    for name, value in headers:
        lower = name.lower()
        if lower in _FORWARDED or lower.startswith(_FORWARDED_PREFIXES):
            out.append((lower, value))
    return out


def from_upstream(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """What the caller gets back: Anthropic's headers (request id, rate-limit figures,
    ``retry-after``, ``x-should-retry``, content type and length), less hop-by-hop ones."""
    return [(k, v) for k, v in headers if k.lower() not in _NOT_RETURNED]


async def reply(send: Send, answer: Reply) -> None:
    await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
    await send({"type": "http.response.body", "body": answer.body, "more_body": False})
