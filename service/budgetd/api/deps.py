"""What a handler needs besides its body: the engine (from app state, read directly: a second
Litestar dependency would make every request resolve both in a task group, which costs ~15 %
of a reserve's CPU) and the caller's principal (the one dependency)."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.di import NamedDependency

from budgetd.auth import ANONYMOUS, KeyRing, Principal
from budgetd.engine import Engine
from budgetd.errors import InvalidRequest


def engine_of(request: Request[Any, Any, Any]) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    ring: KeyRing | None = request.app.state.keyring
    if ring is None:
        return ANONYMOUS
    return ring.authenticate(request.headers.get("authorization"))


def org_of(principal: Principal, org: str | None) -> str:
    """The org a path-only call acts on: the key's org, or ``?org=`` (which must match it)."""
    if org is not None:
        principal.require_org(org)
        return org
    if principal.org is None:
        raise InvalidRequest("org is required (query parameter ?org=)", field="org")
    return principal.org


Caller = NamedDependency[Principal]
AnyRequest = Request[Any, Any, Any]
