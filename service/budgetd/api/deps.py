"""What a handler needs besides its body: the engine and the caller's principal, both read from
the request directly. Litestar dependencies would do the same through its dependency resolver,
which cost ~20 % of a reserve's CPU in the profile (a task group per request for two, the
resolver machinery for one)."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import State

from budgetd.auth import ANONYMOUS, LiveKeys, Principal
from budgetd.engine import Engine
from budgetd.errors import InvalidRequest, Unauthorized


def engine_of(request: Request[Any, Any, Any]) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def caller(request: Request[Any, Any, Any]) -> Principal:
    """Who is calling: the API key's principal (401 without a valid key), or anyone when
    authentication is off."""
    return caller_of(request.app.state, request.headers.getall("authorization", []))


def caller_of(state: State, authorizations: list[str]) -> Principal:
    """``caller`` from the app's state and every ``Authorization`` header value (the fast path
    has no Litestar request). Two headers are refused: taking the first would let a proxy's
    added header and the client's disagree silently."""
    keys: LiveKeys | None = state.api_keys
    if keys is None:
        return ANONYMOUS
    ring = keys.ring
    assert ring is not None  # create_app refuses to start without one good load
    if len(authorizations) > 1:
        raise Unauthorized(
            f"{len(authorizations)} Authorization headers: send exactly one, "
            "'Authorization: Bearer <key>'"
        )
    return ring.authenticate(authorizations[0] if authorizations else None)


def org_of(principal: Principal, org: str | None) -> str:
    """The org a path-only call acts on: the key's org, or ``?org=`` (which must match it)."""
    if org is not None:
        principal.require_org(org)
        return org
    if principal.org is None:
        raise InvalidRequest("org is required (query parameter ?org=)", field="org")
    return principal.org


AnyRequest = Request[Any, Any, Any]
