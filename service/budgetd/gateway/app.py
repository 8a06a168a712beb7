"""The gateway's ASGI app: Anthropic's paths only, each caller authenticated by a budgetd key,
every spending call budgeted by the engine in this process.

What to reserve and how to settle is decided by the sans-I/O core the Python client uses too
(``budgetd_client.core``); this module only routes, authenticates and moves bytes."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any

from budgetd_client.core import Attribution, Call, RequestRefused, Route, plan_call
from litestar import Litestar

from budgetd.api.deps import caller_of
from budgetd.auth import Principal
from budgetd.engine import Engine
from budgetd.errors import BudgetdError
from budgetd.gateway import errors
from budgetd.gateway.batches import Batches
from budgetd.gateway.exchange import Exchange
from budgetd.gateway.settings import GatewaySettings
from budgetd.gateway.upstream import Upstream
from budgetd.gateway.upstream_keys import UpstreamKeys
from budgetd.gateway.wire import Disconnected, Receive, Send, TooLarge, read_body, reply

log = logging.getLogger("budgetd.gateway")

# Anthropic's paths the gateway serves, and the methods each takes.
_ROUTES: tuple[tuple[re.Pattern[str], frozenset[str]], ...] = tuple(
    (re.compile(pattern), frozenset(methods))
    for pattern, methods in (
        (r"/v1/messages", {"POST"}),
        (r"/v1/messages/count_tokens", {"POST"}),
        (r"/v1/messages/batches", {"GET", "POST"}),
        (r"/v1/messages/batches/[A-Za-z0-9_\-]+", {"GET", "DELETE"}),
        (r"/v1/messages/batches/[A-Za-z0-9_\-]+/results", {"GET"}),
        (r"/v1/messages/batches/[A-Za-z0-9_\-]+/cancel", {"POST"}),
        (r"/v1/models", {"GET"}),
        (r"/v1/models/[A-Za-z0-9_.:@\-]+", {"GET"}),
    )
)
_SERVED = (
    "POST /v1/messages, POST /v1/messages/count_tokens, /v1/messages/batches (+ /{id}, "
    "/{id}/results, /{id}/cancel) and GET /v1/models"
)
_BATCHES = "/v1/messages/batches"
_HEALTH = frozenset({"/healthz", "/readyz", "/metrics"})
_ATTRIBUTION_HEADERS = (b"x-budgetd-user", b"x-budgetd-feature")


class Gateway:
    """ASGI app. ``inner`` is the budgetd service app: its lifespan runs the store, policy
    reloads and jobs (the expired-hold sweep above all) for the gateway too, and its health
    endpoints answer for it."""

    def __init__(self, inner: Litestar, settings: GatewaySettings, keys: UpstreamKeys) -> None:
        self.inner = inner
        self.engine: Engine = inner.state.engine
        self.upstream = Upstream(settings)
        self.keys = keys
        self.max_body = settings.max_body_bytes
        self.public_url = settings.public_url
        self.batches = Batches()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await self.inner(scope, receive, self._on_shutdown(send))  # type: ignore[arg-type]
        if scope["type"] != "http":
            return None
        path: str = scope["path"]
        if path in _HEALTH:
            return await self.inner(scope, receive, send)  # type: ignore[arg-type]
        method: str = scope["method"]
        refused = _refusal(method, path)
        if refused is not None:
            return await reply(send, refused)
        try:
            principal = self._authenticate(scope["headers"])
            body = await read_body(receive, self.max_body)
        except BudgetdError as exc:
            return await reply(send, errors.from_budgetd(exc))
        except TooLarge:
            return await reply(
                send, errors.error(413, f"budgetd: request body over {self.max_body} bytes")
            )
        except Disconnected:
            return None
        assert principal.org is not None  # the gateway refuses to start without keys
        api_key = self.keys.for_org(principal.org)
        if api_key is None:
            log.error("no upstream Anthropic key for org %s", principal.org)
            return await reply(
                send,
                errors.error(
                    500,
                    f"budgetd: the gateway has no Anthropic key for org {principal.org!r} "
                    f"(operator: set {self.keys.where(principal.org)})",
                ),
            )
        query: bytes = scope["query_string"]
        target = scope.get("raw_path", path.encode()).decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        try:
            call = _planned(
                plan_call(method, target, scope["headers"], body, _defaults(principal)), principal
            )
        except RequestRefused as exc:
            return await reply(send, errors.error(400, f"budgetd: {exc} (field {exc.field})"))
        x = Exchange(self.engine, self.upstream, principal, api_key)
        if call.route is Route.MESSAGE:
            return await x.message(call, method, target, body, receive, send)
        if call.route is Route.BATCH_SUBMIT:
            return await self.batches.submit(
                x, call, method, target, body, send, self._public(scope)
            )
        if call.route is Route.BATCH_RESULTS:
            return await self.batches.results(x, call, method, target, send)
        if path.startswith(_BATCHES) and method != "DELETE":
            return await self.batches.rewrite(
                x, call, method, target, body, send, self._public(scope)
            )
        await x.passthrough(call, method, target, body, send)

    def _public(self, scope: dict[str, Any]) -> str:
        """The gateway's own base URL as its callers reach it (batch ``results_url``s)."""
        if self.public_url:
            return self.public_url
        host = next((v for k, v in scope["headers"] if k == b"host"), b"").decode("latin-1")
        return f"{scope.get('scheme', 'http')}://{host}"

    def _authenticate(self, headers: list[tuple[bytes, bytes]]) -> Principal:
        """The caller's key, sent the way the SDKs and Claude Code send it: ``x-api-key``, or
        ``Authorization: Bearer`` (``ANTHROPIC_AUTH_TOKEN``)."""
        api_keys = [b"Bearer " + v for k, v in headers if k == b"x-api-key"]
        sent = api_keys or [v for k, v in headers if k == b"authorization"]
        principal = caller_of(self.inner.state, [v.decode("latin-1") for v in sent])
        if not principal.attribution_headers:
            named = [n.decode() for n, _ in headers if n in _ATTRIBUTION_HEADERS]
            if named:
                raise PermissionRefused(
                    f"this key may not name who a call is charged to ({', '.join(named)}); "
                    f"its calls are charged to org {principal.org}"
                    + (f", user {principal.user}" if principal.user else "")
                    + (f", feature {principal.feature}" if principal.feature else "")
                )
        return principal

    def _on_shutdown(self, send: Send) -> Send:
        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.upstream.close()
            await send(message)

        return sending


class PermissionRefused(BudgetdError):
    type_slug = "forbidden"
    status = 403


def _refusal(method: str, path: str) -> errors.Reply | None:
    for pattern, methods in _ROUTES:
        if pattern.fullmatch(path):
            if method in methods:
                return None
            return errors.error(
                405, f"budgetd gateway: {method} is not allowed on {path} ({'/'.join(methods)})"
            )
    return errors.error(
        404, f"budgetd gateway: {method} {path} is not served here; it serves {_SERVED}"
    )


def _defaults(principal: Principal) -> Attribution:
    return Attribution(user=principal.user, feature=principal.feature)


def _planned(call: Call, principal: Principal) -> Call:
    """The core's plan, with the key's attribution where the key does not let callers choose
    (the core would also take ``metadata.user_id``, which such a caller must not steer)."""
    if principal.attribution_headers or not call.reserves:
        return call
    pinned = tuple(
        replace(r, user=principal.user, feature=principal.feature) for r in call.reserves
    )
    return replace(call, reserves=pinned)
