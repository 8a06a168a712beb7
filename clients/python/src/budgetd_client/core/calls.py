"""Outgoing requests: which ones spend, who they are charged to, and what to reserve for them."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from budgetd_client.core.bound import Bound, count_body, input_bound

CacheTTL = Literal["5m", "1h"]
Speed = Literal["standard", "fast"]
Header = tuple[Any, Any]
"""A header as (name, value): both str (httpx) or both bytes (ASGI)."""

HEADER_PREFIX = "x-budgetd-"
USER_HEADER = "x-budgetd-user"
FEATURE_HEADER = "x-budgetd-feature"
SESSION_HEADER = "x-budgetd-session"
TAGS_HEADER = "x-budgetd-tags"
"""Tags of a call, comma-separated (``project:search, env:staging``)."""
DEFAULT_WEB_SEARCHES = 10
"""Worst case assumed for a web-search tool without ``max_uses``."""
DECODABLE = ("gzip", "deflate", "identity")
"""Response encodings the settlers read; budgeted calls ask upstream for these only."""

_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$")
"""budgetd's user/feature id pattern (``budgetd.contract.Identifier``)."""
_MESSAGES = re.compile(r"(?:^|/)v1/messages$")
_BATCHES = re.compile(r"(?:^|/)v1/messages/batches$")
_BATCH_RESULTS = re.compile(r"(?:^|/)v1/messages/batches/(?P<id>[^/]+)/results$")
_BATCH_CANCEL = re.compile(r"(?:^|/)v1/messages/batches/(?P<id>[^/]+)/cancel$")


class Route(Enum):
    """What an outgoing request is, for budgeting."""

    MESSAGE = "message"
    """``POST /v1/messages`` (``?beta=true`` too): reserve one, settle from the response."""
    BATCH_SUBMIT = "batch_submit"
    """``POST /v1/messages/batches``: reserve each request at the batch price."""
    BATCH_RESULTS = "batch_results"
    """``GET /v1/messages/batches/{id}/results``: settle each result line."""
    BATCH_CANCEL = "batch_cancel"
    """``POST /v1/messages/batches/{id}/cancel``: nothing to settle yet (results will say which
    requests were canceled); shells may note it."""
    OTHER = "other"
    """No spend: passed through untouched."""


class RequestRefused(ValueError):
    """A budgeted request whose body cannot be read: it is not sent (an unread body would go
    upstream unbudgeted). ``field`` names the part at fault."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who a call is charged to. Unset fields fall back to the outer attribution."""

    user: str | None = None
    feature: str | None = None
    session: str | None = None
    metadata: Mapping[str, str] | None = None
    tags: tuple[str, ...] = ()
    """Added to the outer attribution's tags, not instead of them (once each)."""

    def over(self, base: Attribution) -> Attribution:
        meta = {**(base.metadata or {}), **(self.metadata or {})}
        return Attribution(
            user=self.user or base.user,
            feature=self.feature or base.feature,
            session=self.session or base.session,
            metadata=meta or None,
            tags=tuple(dict.fromkeys((*base.tags, *self.tags))),
        )

    def reserve_metadata(self) -> dict[str, str] | None:
        """A copy of the metadata to send (None when empty)."""
        return dict(self.metadata) if self.metadata else None


@dataclass(frozen=True, slots=True)
class Reserve:
    """One reservation to make: the fields of ``POST /v1/reservations`` but ``org``,
    ``reservation_id`` and ``ttl_s``, which the shell chooses."""

    model: str
    input_tokens: int
    max_tokens: int
    bound: Bound
    user: str | None = None
    feature: str | None = None
    session: str | None = None
    metadata: dict[str, str] | None = None
    tags: tuple[str, ...] = ()
    cache_ttl: CacheTTL | None = None
    batch: bool = False
    inference_geo: str | None = None
    speed: Speed | None = None
    web_searches: int = 0
    custom_id: str | None = None
    """The batch request's ``custom_id`` (batch submits only)."""

    def fields(self) -> dict[str, Any]:
        """Keyword arguments of ``BudgetdClient.reserve`` (and fields of the service's
        ``ReserveRequest``), ``None`` for what is not set."""
        return {
            "model": self.model,
            "input_tokens": self.input_tokens,
            "max_tokens": self.max_tokens,
            "user": self.user,
            "feature": self.feature,
            "session": self.session,
            "metadata": self.metadata,
            "tags": list(self.tags),
            "cache_ttl": self.cache_ttl,
            "batch": self.batch,
            "inference_geo": self.inference_geo,
            "speed": self.speed,
            "web_searches": self.web_searches,
        }

    def counted(self, count_tokens_answer: int) -> Reserve:
        """This reserve with the input figure from an upstream ``count_tokens`` answer."""
        return replace(self, input_tokens=self.bound.counted(count_tokens_answer))


@dataclass(frozen=True)
class Call:
    """What to do about one outgoing request."""

    route: Route
    headers: list[Header]
    """The request's headers for upstream: budgetd's own removed (on every route),
    ``accept-encoding`` limited to ``DECODABLE`` on budgeted ones; same str/bytes type as
    given."""
    reserves: tuple[Reserve, ...] = ()
    """One for a message; one per request for a batch submit; none otherwise."""
    stream: bool = False
    batch_id: str | None = None
    request: dict[str, Any] | None = field(default=None, repr=False)
    """The decoded body (messages only)."""

    @functools.cached_property
    def count_body(self) -> bytes | None:
        """Body of the matching ``count_tokens`` request (messages only), for shells whose
        caller opted into the round trip; built on first use."""
        return count_body(self.request) if self.request is not None else None


def tags_of(header: str) -> tuple[str, ...]:
    """The tags of an ``x-budgetd-tags`` header (comma-separated; blanks ignored). Their number
    and spelling are budgetd's to check: a call with a bad tag is refused there, not here."""
    return tuple(dict.fromkeys(t.strip() for t in header.split(",") if t.strip()))


def route_of(method: str, target: str) -> tuple[Route, str | None]:
    """The route of ``method target`` (a path, a path with a query, or a full URL) and the
    batch id it names."""
    path = urlsplit(target).path.rstrip("/")
    method = method.upper()
    if method == "POST" and _MESSAGES.search(path):
        return Route.MESSAGE, None
    if method == "POST" and _BATCHES.search(path):
        return Route.BATCH_SUBMIT, None
    if method == "GET" and (m := _BATCH_RESULTS.search(path)):
        return Route.BATCH_RESULTS, m["id"]
    if method == "POST" and (m := _BATCH_CANCEL.search(path)):
        return Route.BATCH_CANCEL, m["id"]
    return Route.OTHER, None


def plan_call(
    method: str,
    target: str,
    headers: Iterable[Header],
    body: bytes,
    defaults: Attribution = Attribution(),  # frozen: a shared default is safe
) -> Call:
    """Decide about one outgoing request.

    Attribution, weakest first: ``defaults`` (the guard's arguments, or the gateway key's),
    the request's ``metadata.user_id`` (a message's, or each batch request's), then the
    ``x-budgetd-user`` / ``x-budgetd-feature`` / ``x-budgetd-session`` headers. Tags add up:
    the defaults' and the ``x-budgetd-tags`` header's.

    Raises:
        RequestRefused: a budgeted route whose body is not a readable request.
    """
    pairs = list(headers)
    route, batch_id = route_of(method, target)
    if route is Route.OTHER:
        return Call(route=route, headers=_without_ours(pairs))
    sent = {_text(k).lower(): _text(v) for k, v in pairs}
    outgoing = upstream_headers(pairs)
    if route in (Route.BATCH_RESULTS, Route.BATCH_CANCEL):
        return Call(route=route, headers=outgoing, batch_id=batch_id)
    if sent.get("content-encoding", "identity") != "identity":
        raise RequestRefused(
            "a budgeted request body must not be content-encoded", field="content-encoding"
        )
    request = _decode(body, "body")
    by_header = Attribution(
        user=sent.get(USER_HEADER) or None,
        feature=sent.get(FEATURE_HEADER) or None,
        session=sent.get(SESSION_HEADER) or None,
        tags=tags_of(sent.get(TAGS_HEADER, "")),
    )
    if route is Route.MESSAGE:
        who = by_header.over(_metadata_user(request).over(defaults))
        reserve = plan_message(body, request, who, batch=False, where="")
        return Call(
            route=route,
            headers=outgoing,
            reserves=(reserve,),
            stream=request.get("stream") is True,
            request=request,
        )
    requests = request.get("requests")
    if not isinstance(requests, list) or not requests:
        raise RequestRefused("a batch needs a non-empty list of requests", field="requests")
    reserves = []
    for i, item in enumerate(requests):
        where = f"requests[{i}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("params"), Mapping):
            raise RequestRefused("each batch request needs params", field=f"{where}.params")
        params = item["params"]
        who = by_header.over(_metadata_user(params).over(defaults))
        reserve = plan_message(
            msgspec.json.encode(params), params, who, batch=True, where=f"{where}.params."
        )
        reserves.append(replace(reserve, custom_id=str(item.get("custom_id", i))))
    return Call(route=route, headers=outgoing, reserves=tuple(reserves))


def plan_message(
    body: bytes, request: Mapping[str, Any], who: Attribution, *, batch: bool, where: str
) -> Reserve:
    """The reserve for one message request (``body`` is its JSON, ``request`` decoded)."""
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise RequestRefused("model is required", field=f"{where}model")
    max_tokens = request.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise RequestRefused("max_tokens must be a positive integer", field=f"{where}max_tokens")
    bound = input_bound(body, request)
    geo = request.get("inference_geo")
    speed = request.get("speed")
    return Reserve(
        model=model,
        input_tokens=bound.tokens,
        max_tokens=max_tokens,
        bound=bound,
        user=who.user,
        feature=who.feature,
        session=who.session,
        metadata=who.reserve_metadata(),
        tags=who.tags,
        cache_ttl=cache_ttl_of(request, body),
        batch=batch,
        inference_geo=geo if isinstance(geo, str) else None,
        speed=speed if speed in ("standard", "fast") else None,
        web_searches=web_searches_of(request.get("tools")),
    )


def upstream_headers(pairs: Iterable[Header]) -> list[Header]:
    """``pairs`` without budgetd's own headers, and asking for encodings the settlers read."""
    out: list[Header] = []
    for name, value in pairs:
        lower = _text(name).lower()
        if lower.startswith(HEADER_PREFIX):
            continue
        if lower == "accept-encoding":
            kept = [e for e in _text(value).split(",") if e.strip().split(";")[0] in DECODABLE]
            out.append((name, _like(value, ",".join(kept) or "identity")))
        else:
            out.append((name, value))
    return out


def _without_ours(pairs: list[Header]) -> list[Header]:
    return [(k, v) for k, v in pairs if not _text(k).lower().startswith(HEADER_PREFIX)]


def cache_ttl_of(request: Mapping[str, Any], body: bytes | None = None) -> CacheTTL | None:
    """The longest prompt-cache TTL the request writes: ``"1h"`` when any ``cache_control``
    says ``"ttl": "1h"``, else ``"5m"`` when any ``cache_control`` is present (the top-level
    one, automatic caching, too), else None. Given the raw ``body``, a request that never says
    ``cache_control`` is answered without walking it (the walk is most of a large request's
    planning time)."""
    if body is not None and b'"cache_control"' not in body:
        return None
    found: CacheTTL | None = None
    stack: list[Any] = [request.get(k) for k in ("system", "messages", "tools")]
    top = request.get("cache_control")
    if isinstance(top, dict):
        stack.append({"cache_control": top})
    while stack:
        node = stack.pop()
        if type(node) is dict:
            control = node.get("cache_control")
            if type(control) is dict:
                if control.get("ttl") == "1h":
                    return "1h"
                found = "5m"
            stack.extend(node.values())
        elif type(node) is list:
            stack.extend(node)
    return found


def web_searches_of(tools: Any) -> int:
    """The most web searches the request's server tools may run."""
    total = 0
    for tool in tools if type(tools) is list else ():
        if type(tool) is dict and str(tool.get("type", "")).startswith("web_search"):
            uses = tool.get("max_uses")
            total += uses if isinstance(uses, int) else DEFAULT_WEB_SEARCHES
    return total


def _metadata_user(request: Mapping[str, Any]) -> Attribution:
    meta = request.get("metadata")
    user = meta.get("user_id") if isinstance(meta, Mapping) else None
    # Only an id budgetd accepts: SDKs and Claude Code put long opaque strings here, which must
    # not turn a call into a 422.
    ok = isinstance(user, str) and _IDENTIFIER.match(user)
    return Attribution(user=user if ok else None)


def _decode(body: bytes, where: str) -> dict[str, Any]:
    try:
        request = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise RequestRefused(f"the request body is not JSON: {exc}", field=where) from None
    if not isinstance(request, dict):
        raise RequestRefused("the request body must be a JSON object", field=where)
    return request


def _like(template: str | bytes, text: str) -> str | bytes:
    """``text`` as the same type as ``template`` (ASGI headers are bytes, httpx's str)."""
    return text.encode("latin-1") if isinstance(template, bytes) else text


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value
